# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reading a layer blob: compression by magic bytes, decompression, digests.

``detect_compression(path)`` says ``gzip``, ``zstd`` or ``none`` from the first
bytes. ``open_layer_stream(path)`` returns a reader of the uncompressed tar.
gzip runs in a ``gzip -dc`` child process (a second core decompresses while this
one unpacks), with ``zlib`` in-process when there is no ``gzip`` binary; zstd
uses the ``zstandard`` package and falls back to a ``zstd -dc`` child.

:class:`DigestingReader` is what the extractor reads: it hashes the blob as
stored (``compressed_digest``) and the uncompressed stream (``diff_id``) in the
same pass, so a layer is read once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import shutil
import subprocess
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, cast

from ansible_collections.lapis.layers.plugins.module_utils.layer_policy import LayerError

try:
    import zstandard

    HAS_ZSTANDARD = True
    ZSTANDARD_IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # pragma: no cover - depends on the host
    HAS_ZSTANDARD = False
    ZSTANDARD_IMPORT_ERROR = exc

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"
COMPRESSIONS = (GZIP, ZSTD, NONE)
CHUNK = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def detect_compression(path: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for the blob at ``path``, by its magic bytes."""
    with open(path, "rb") as blob:
        head = blob.read(4)
    if head[:2] == b"\x1f\x8b":
        return GZIP
    if head == b"\x28\xb5\x2f\xfd":
        return ZSTD
    return NONE


class _Reader(io.RawIOBase):
    """A readable raw stream whose subclasses only implement ``read``."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_to_end(self) -> None:
        while self.read(CHUNK):
            pass


class _HashingFile(_Reader):
    """The blob as stored, hashed as it is read."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(CHUNK if size is None or size < 0 else size) or b""
        self.sha256.update(data)
        return data

    def drain(self) -> None:
        """Hash what is left unread (trailing bytes after the compressed stream)."""
        self.read_to_end()

    def close(self) -> None:
        self._file.close()
        super().close()


class _ChildDecompressor(_Reader):
    """``gzip -dc`` / ``zstd -dc`` in a child process, fed by a thread that hashes the blob."""

    def __init__(self, source: _HashingFile, argv: list[str]) -> None:
        super().__init__()
        self._source = source
        self._argv = argv
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):  # a smaller pipe only costs speed
                fcntl.fcntl(cast(BinaryIO, pipe).fileno(), _F_SETPIPE_SZ, CHUNK)
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()
        self._out = cast(BinaryIO, self._proc.stdout)

    def _feed(self) -> None:
        stdin = cast(BinaryIO, self._proc.stdin)
        try:
            while True:
                data = self._source.read(CHUNK)
                if not data:
                    break
                stdin.write(data)
        except BrokenPipeError:
            self._source.drain()
        except BaseException as exc:  # reported by finish()
            self._feed_error = exc
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def read(self, size: int = -1) -> bytes:
        return self._out.read(CHUNK if size is None or size < 0 else size) or b""

    def finish(self) -> None:
        """Wait for the child; raise :class:`LayerError` when it failed."""
        while self._out.read(CHUNK):
            pass
        self._feeder.join()
        stderr = cast(BinaryIO, self._proc.stderr).read().decode("utf-8", "replace").strip()
        code = self._proc.wait()
        if self._feed_error is not None:
            raise LayerError(None, f"reading the blob failed: {self._feed_error}")
        if code != 0:
            tool = Path(self._argv[0]).name
            raise LayerError(None, f"{tool} could not decompress the blob: {stderr or code}")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._feeder.join()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
        super().close()


class _ZlibDecompressor(_Reader):
    """gzip in-process (all members of a multi-member file), when there is no ``gzip``."""

    def __init__(self, source: _HashingFile) -> None:
        super().__init__()
        self._source = source
        self._zlib = zlib.decompressobj(wbits=31)
        self._pending = b""
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        while not self._pending and not self._eof:
            self._pending = self._inflate(want)
        data, self._pending = self._pending[:want], self._pending[want:]
        return data

    def _inflate(self, want: int) -> bytes:
        data = self._zlib.unconsumed_tail or self._source.read(CHUNK)
        if not data:
            if not self._zlib.eof:
                raise LayerError(None, "gzip stream is truncated")
            self._eof = True
            return b""
        try:
            out = self._zlib.decompress(data, max(want, CHUNK))
            if self._zlib.eof and self._zlib.unused_data:
                rest = self._zlib.unused_data
                self._zlib = zlib.decompressobj(wbits=31)
                out += self._zlib.decompress(rest, max(want, CHUNK))
        except zlib.error as exc:
            raise LayerError(None, f"gzip stream is corrupt: {exc}") from exc
        return out

    def finish(self) -> None:
        self.read_to_end()


class DigestingReader(_Reader):
    """The uncompressed tar stream of a blob, hashed and counted as it is read.

    After :meth:`finish`: ``diff_id`` (uncompressed), ``compressed_digest`` (as
    stored) and ``size`` (uncompressed bytes).
    """

    def __init__(self, path: str, compression: str | None = None) -> None:
        super().__init__()
        self.compression = compression or detect_compression(path)
        if self.compression not in COMPRESSIONS:
            raise LayerError(None, f"unknown compression {self.compression!r}")
        self._source = _HashingFile(path)
        self._inner: io.RawIOBase = self._source
        try:
            self._inner = _decompressor(self._source, self.compression)
        except BaseException:
            self._source.close()
            raise
        self._sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size) or b""
        self._sha256.update(data)
        self.size += len(data)
        return data

    def finish(self) -> None:
        """Read to the end (trailing padding counts for the diff_id); check the decompressor."""
        self.read_to_end()
        finish = getattr(self._inner, "finish", None)
        if finish is not None:
            finish()
        self._source.drain()

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._sha256.hexdigest()

    @property
    def compressed_digest(self) -> str:
        if self.compression == NONE:
            return self.diff_id
        return "sha256:" + self._source.sha256.hexdigest()

    def close(self) -> None:
        if self._inner is not self._source:
            self._inner.close()
        self._source.close()
        super().close()


class _ZstdReader(_Reader):
    """zstd through the ``zstandard`` package (all frames)."""

    def __init__(self, source: _HashingFile) -> None:
        super().__init__()
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, source), read_across_frames=True
        )
        self._reader = reader

    def read(self, size: int = -1) -> bytes:
        try:
            return self._reader.read(CHUNK if size is None or size < 0 else size)
        except zstandard.ZstdError as exc:
            raise LayerError(None, f"zstd stream is corrupt: {exc}") from exc

    def finish(self) -> None:
        self.read_to_end()

    def close(self) -> None:
        self._reader.close()
        super().close()


def _decompressor(source: _HashingFile, compression: str) -> io.RawIOBase:
    if compression == GZIP:
        gzip = shutil.which("gzip")
        return _ChildDecompressor(source, [gzip, "-dc"]) if gzip else _ZlibDecompressor(source)
    if compression == ZSTD:
        if HAS_ZSTANDARD:
            return _ZstdReader(source)
        zstd = shutil.which("zstd")
        if zstd is None:
            raise LayerError(
                None,
                "zstd layer needs the Python package zstandard or the zstd command; "
                "install one of them",
            )
        return _ChildDecompressor(source, [zstd, "-dc", "-q"])
    return source


def open_layer_stream(path: str, compression: str | None = None) -> BinaryIO:
    """A reader of the uncompressed tar stream of the blob at ``path``.

    ``compression`` (``gzip``, ``zstd``, ``none``) is detected when not given.
    Read errors of the decompressor surface as :class:`LayerError`; the reader's
    ``finish()`` checks the end of the stream, ``close()`` releases the child.
    """
    try:
        return cast(BinaryIO, DigestingReader(path, compression))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise LayerError(None, f"blob {path} does not exist") from exc
        raise
