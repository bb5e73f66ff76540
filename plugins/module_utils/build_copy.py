# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""COPY and ADD into a step root: context files, other stages, heredocs, archives, URLs.

Everything is written through the mounted step root (see ``build_rootfs``), so the
kernel copies up the parent directories with their metadata and the upper directory
holds exactly the step's layer. Paths in the image are resolved with
``runtime_spec.resolve_in_root`` (symlinks followed as if the root were ``/``), so a
symlink in the image never makes a COPY write outside the root.

Docker's rules, as implemented here:

- a directory source copies its *contents* into the destination;
- a file source goes to ``dest/<name>`` when the destination ends with ``/`` or is an
  existing directory, else to ``dest`` itself; ``--parents`` keeps the source's path;
- files from the build context are owned by 0:0, files from another stage or image
  keep their owners; ``--chown`` sets the owner of everything copied and of the
  directories created for the destination (a user without a group uses the uid as gid);
- ``--chmod`` (octal or symbolic) sets the mode of everything copied;
- modes and modification times of sources are kept;
- ``ADD`` extracts a local tar archive (plain, gzip, bzip2, xz) into the destination
  directory and downloads ``http(s)`` URLs (mode 0600, mtime from Last-Modified),
  checking ``--checksum`` when given.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_context import (
    ContextEntry,
    SourceMatch,
)

ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_URL_TIMEOUT = 60.0
_CHUNK = 1 << 20


class CopyError(Exception):
    """A COPY/ADD cannot be done; the message names the source or destination."""


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


@dataclass
class Fetched:
    """An ADD URL downloaded to a temp file, with the digests --checksum may name."""

    url: str
    path: str
    digests: dict[str, str]
    mtime: float | None

    @property
    def digest(self) -> str:
        return self.digests["sha256"]


# --- owners and modes ------------------------------------------------------------------------


def resolve_chown(rootfs: str, chown: str) -> Owner | None:
    """``--chown=user[:group]`` against the image's /etc/passwd and /etc/group."""
    if not chown:
        return None
    # runtime_spec (and jsonschema behind it) is imported only when a step runs:
    # a fully cached build stays quick to start.
    from ansible_collections.lapis.layers.plugins.module_utils.runtime_spec import (  # noqa: PLC0415
        RuntimeSpecError,
        resolve_user,
    )

    group = chown.partition(":")[2]
    try:
        resolved = resolve_user(rootfs, chown)
    except RuntimeSpecError as exc:
        raise CopyError(f"--chown={chown}: {exc}") from exc
    gid = resolved.gid if group else resolved.uid
    return Owner(resolved.uid, gid)


def apply_chmod(spec: str, mode: int, is_dir: bool) -> int:
    """The permission bits after ``--chmod=spec`` (octal, or symbolic like ``u+x,go=r``)."""
    if not spec:
        return mode
    if spec.isdigit():
        return int(spec, 8)
    result = stat.S_IMODE(mode)
    for clause in spec.split(","):
        who, op, perms = _split_clause(clause)
        mask = _who_mask(who)
        bits = _perm_bits(perms, who, result, is_dir)
        if op == "+":
            result |= bits & mask
        elif op == "-":
            result &= ~(bits & mask)
        else:
            result = (result & ~mask) | (bits & mask)
    return result


def _split_clause(clause: str) -> tuple[str, str, str]:
    for index, char in enumerate(clause):
        if char in "+-=":
            return clause[:index], char, clause[index + 1 :]
    raise CopyError(f"invalid --chmod clause {clause!r}")


def _who_mask(who: str) -> int:
    if not who or "a" in who:
        return 0o7777
    mask = 0
    if "u" in who:
        mask |= 0o4700
    if "g" in who:
        mask |= 0o2070
    if "o" in who:
        mask |= 0o1007
    return mask


def _perm_bits(perms: str, who: str, current: int, is_dir: bool) -> int:
    bits = 0
    for char in perms:
        if char == "r":
            bits |= 0o444
        elif char == "w":
            bits |= 0o222
        elif char == "x" or (char == "X" and (is_dir or current & 0o111)):
            bits |= 0o111
        elif char == "s":
            bits |= 0o6000
        elif char == "t":
            bits |= 0o1000
    return bits


# --- writing inside the root ----------------------------------------------------------------


def resolve_in_root(root: str, path: str) -> str:
    """``runtime_spec.resolve_in_root``, imported when first needed."""
    from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec  # noqa: PLC0415

    try:
        return runtime_spec.resolve_in_root(root, path)
    except runtime_spec.RuntimeSpecError as exc:
        raise CopyError(f"cannot resolve {path} in the image: {exc}") from exc


def _in_root(root: Path, path: str) -> Path:
    return Path(resolve_in_root(str(root), path))


def ensure_dir(root: Path, path: str, owner: Owner | None) -> Path:
    """``mkdir -p`` of the image path ``path`` inside ``root``; new directories 0755."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = posixpath.join(current, part)
        host = _in_root(root, current)
        if host.is_dir():
            continue
        if host.is_symlink() or host.exists():
            raise CopyError(f"cannot create directory {current}: a file of that name exists")
        host.mkdir(mode=0o755)
        host.chmod(0o755)
        if owner is not None:
            os.chown(host, owner.uid, owner.gid)
    return _in_root(root, path or "/")


def _clear(target: Path, keep_dir: bool) -> None:
    if target.is_dir() and not target.is_symlink():
        if keep_dir:
            return
        shutil.rmtree(target)
    elif target.is_symlink() or target.exists():
        target.unlink()


@dataclass
class _Writer:
    root: Path
    owner: Owner | None
    chmod: str
    keep_owner: bool
    dirs: list[tuple[Path, os.stat_result, int]]

    def owner_of(self, info: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner.uid, self.owner.gid
        if self.keep_owner:
            return info.st_uid, info.st_gid
        return 0, 0

    def write(self, source: Path, target: Path) -> None:
        info = source.lstat()
        uid, gid = self.owner_of(info)
        if stat.S_ISDIR(info.st_mode):
            _clear(target, keep_dir=True)
            if not target.is_dir():
                target.mkdir()
            mode = apply_chmod(self.chmod, stat.S_IMODE(info.st_mode), True)
            os.chown(target, uid, gid)
            self.dirs.append((target, info, mode))
            return
        _clear(target, keep_dir=False)
        if stat.S_ISLNK(info.st_mode):
            target.symlink_to(source.readlink())
            os.chown(target, uid, gid, follow_symlinks=False)
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
            return
        if not stat.S_ISREG(info.st_mode):
            raise CopyError(f"{source} is not a regular file, directory or symlink")
        shutil.copyfile(source, target, follow_symlinks=False)
        os.chown(target, uid, gid)
        target.chmod(apply_chmod(self.chmod, stat.S_IMODE(info.st_mode), False))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))

    def finish(self) -> None:
        """Directory modes and times last, deepest first (writing children changes them)."""
        for target, info, mode in reversed(self.dirs):
            target.chmod(mode)
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        self.dirs.clear()


def _is_dir_in_root(root: Path, path: str) -> bool:
    return _in_root(root, path).is_dir()


def _leaf_target(root: Path, dest: str, name: str, parents: bool, rel: str) -> str:
    if parents:
        return posixpath.join(dest, rel)
    if dest.endswith("/") or _is_dir_in_root(root, dest):
        return posixpath.join(dest, name)
    return dest


def _place(root: Path, image_path: str, owner: Owner | None) -> Path:
    parent, _sep, name = image_path.rstrip("/").rpartition("/")
    if not name:
        raise CopyError(f"cannot write to {image_path!r}: expected a path below /")
    return ensure_dir(root, parent or "/", owner) / name


def copy_matches(
    root: Path,
    src_root: Path,
    matches: list[SourceMatch],
    dest: str,
    *,
    owner: Owner | None = None,
    chmod: str = "",
    keep_owner: bool = False,
    parents: bool = False,
    extract: bool = False,
) -> None:
    """Copy what ``matches`` cover from ``src_root`` to ``dest`` inside ``root``."""
    writer = _Writer(root, owner, chmod, keep_owner, [])
    for match in matches:
        if not match.entries:
            continue
        real_root = Path(resolve_in_root(str(src_root), match.root))
        first = match.entries[0]
        is_dir = match.root == "." or (first.path == match.root and first.kind == "dir")
        if is_dir:
            _copy_tree(writer, root, real_root=real_root, match=match, dest=dest, parents=parents)
        elif extract and first.kind == "file" and is_archive(real_root):
            target_dir = ensure_dir(root, dest, owner)
            extract_archive(real_root, target_dir, owner)
        else:
            name = match.root.rsplit("/", 1)[-1]
            target = _place(root, _leaf_target(root, dest, name, parents, match.root), owner)
            writer.write(real_root, target)
    writer.finish()


def _copy_tree(
    writer: _Writer, root: Path, *, real_root: Path, match: SourceMatch, dest: str, parents: bool
) -> None:
    base = posixpath.join(dest, match.root) if parents and match.root != "." else dest
    ensure_dir(root, base, writer.owner)
    prefix = "" if match.root == "." else match.root + "/"
    entries: list[ContextEntry] = [e for e in match.entries if e.path != match.root]
    for entry in entries:
        rel = entry.path[len(prefix) :]
        parent, _sep, name = rel.rpartition("/")
        target_dir = _in_root(root, posixpath.join(base, parent))
        if not target_dir.is_dir():
            target_dir = ensure_dir(root, posixpath.join(base, parent), writer.owner)
        writer.write(real_root / rel, target_dir / name)


def write_heredoc(
    root: Path,
    dest: str,
    name: str,
    content: str,
    *,
    owner: Owner | None,
    chmod: str,
    mtime: int,
) -> None:
    """``COPY <<EOF /dest``: the body as a file named ``name`` (0644 unless --chmod)."""
    image_path = _leaf_target(root, dest, name, False, name)
    target = _place(root, image_path, owner)
    _clear(target, keep_dir=False)
    target.write_bytes(content.encode("utf-8", "surrogateescape"))
    target.chmod(apply_chmod(chmod, 0o644, False))
    if owner is not None:
        os.chown(target, owner.uid, owner.gid)
    os.utime(target, (mtime, mtime))


# --- ADD: archives and URLs --------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    """A tar archive, plain or compressed with gzip, bzip2 or xz (by content, like Docker)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return False
    if head.startswith(ARCHIVE_MAGIC):
        try:
            with tarfile.open(path, "r:*") as archive:
                return archive.next() is not None
        except (tarfile.TarError, OSError, EOFError):
            return False
    return len(head) == 512 and head[257:262] == b"ustar"


def extract_archive(path: Path, target: Path, owner: Owner | None) -> None:
    """Extract a local archive into ``target`` (a directory inside the root)."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = archive.getmembers()
            archive.extractall(target, members=members, numeric_owner=True, filter="tar")
    except (tarfile.TarError, OSError) as exc:
        raise CopyError(f"ADD cannot extract archive {path.name}: {exc}") from exc
    if owner is not None:
        for member in members:
            member_path = target / member.name
            if member_path.is_symlink() or member_path.exists():
                os.chown(member_path, owner.uid, owner.gid, follow_symlinks=False)


def fetch_url(url: str, work: Path, checksum: str = "") -> Fetched:
    """Download ``url`` into ``work``; checks ``--checksum`` (sha256/384/512) when given."""
    from ansible.module_utils.urls import open_url  # noqa: PLC0415 -- only ADD of a URL needs it

    hashes = {name: hashlib.new(name) for name in ("sha256", "sha384", "sha512")}
    fd, tmp = tempfile.mkstemp(prefix="add-url-", dir=work)
    try:
        with os.fdopen(fd, "wb") as out, open_url(url, timeout=_URL_TIMEOUT) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                for hasher in hashes.values():
                    hasher.update(chunk)
                out.write(chunk)
            modified = resp.headers.get("Last-Modified")
    except (OSError, ValueError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CopyError(f"ADD cannot download {url}: {exc}") from exc
    digests = {name: f"{name}:{hasher.hexdigest()}" for name, hasher in hashes.items()}
    try:
        check_checksum(url, digests, checksum)
    except CopyError:
        Path(tmp).unlink(missing_ok=True)
        raise
    mtime = None
    if modified:
        parsed = email.utils.parsedate_to_datetime(modified)
        mtime = parsed.timestamp() if parsed is not None else None
    return Fetched(url=url, path=tmp, digests=digests, mtime=mtime)


def check_checksum(url: str, digests: dict[str, str], checksum: str) -> None:
    """Raise CopyError unless the download's digest is ``checksum`` (when one is given)."""
    if not checksum:
        return
    algo = checksum.partition(":")[0]
    if digests.get(algo) != checksum:
        raise CopyError(
            f"ADD {url}: checksum mismatch: expected {checksum}, got {digests.get(algo)}"
        )


def url_basename(url: str) -> str:
    """The file name an ADD of ``url`` to a directory uses."""
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise CopyError(
            f"ADD {url}: the URL has no file name; expected a destination file path, not a "
            "directory"
        )
    return name


def write_fetched(root: Path, dest: str, fetched: Fetched, owner: Owner | None, chmod: str) -> None:
    """Place a downloaded file (mode 0600 unless --chmod, mtime from Last-Modified)."""
    image_path = _leaf_target(root, dest, url_basename(fetched.url), False, "")
    target = _place(root, image_path, owner)
    _clear(target, keep_dir=False)
    shutil.copyfile(fetched.path, target)
    target.chmod(apply_chmod(chmod, 0o600, False))
    if owner is not None:
        os.chown(target, owner.uid, owner.gid)
    if fetched.mtime is not None:
        os.utime(target, (fetched.mtime, fetched.mtime))
