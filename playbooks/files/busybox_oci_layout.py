# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Write a small OCI image layout holding a static busybox, offline, with the standard library.

Usage: python3 busybox_oci_layout.py DEST [--tag TAG] [--busybox /bin/busybox]
                                          [--cmd JSON] [--stop-signal SIG] [--label K=V]

Two layers: the busybox binary with its applet symlinks and the usual top-level
directories, then /etc/passwd and /etc/group (root, app 1000, nobody 65534). The output is
deterministic (fixed timestamps, gzip without a name or time), so the same inputs always
give the same digests. Needs the Debian package busybox-static for /bin/busybox.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import struct
import tarfile
from pathlib import Path

APPLETS = (
    "sh",
    "cat",
    "echo",
    "env",
    "false",
    "hostname",
    "id",
    "ip",
    "kill",
    "ls",
    "mkdir",
    "ps",
    "pwd",
    "rm",
    "sleep",
    "sync",
    "tail",
    "touch",
    "true",
    "uname",
    "wc",
)
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
app:x:1000:
users:x:100:app
nogroup:x:65534:
"""
MTIME = 1_700_000_000
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def _entry(name: str, kind: bytes, mode: int, **extra: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def layer_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """An uncompressed tar of ``entries``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def busybox_layer(busybox: Path) -> bytes:
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name in ("bin", "dev", "etc", "home", "proc", "root", "sys", "usr", "var"):
        entries.append((_entry(name, tarfile.DIRTYPE, 0o755), None))
    entries.append((_entry("tmp", tarfile.DIRTYPE, 0o1777), None))
    entries.append((_entry("bin/busybox", tarfile.REGTYPE, 0o755), busybox.read_bytes()))
    for applet in APPLETS:
        entries.append((_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"), None))
    return layer_tar(entries)


def users_layer() -> bytes:
    return layer_tar(
        [
            (_entry("etc", tarfile.DIRTYPE, 0o755), None),
            (_entry("etc/passwd", tarfile.REGTYPE, 0o644), PASSWD.encode()),
            (_entry("etc/group", tarfile.REGTYPE, 0o644), GROUP.encode()),
            (_entry("home/app", tarfile.DIRTYPE, 0o755, uid=1000, gid=1000), None),
        ]
    )


def write_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def image_config(diff_ids: list[str], args: argparse.Namespace) -> dict[str, object]:
    config: dict[str, object] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": json.loads(args.cmd),
    }
    if args.stop_signal:
        config["StopSignal"] = args.stop_signal
    if args.label:
        config["Labels"] = dict(item.split("=", 1) for item in args.label)
    return {
        "architecture": ARCHES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": f"busybox_oci_layout.py: layer {n}"} for n in range(len(diff_ids))
        ],
    }


def write_layout(dest: Path, args: argparse.Namespace) -> str:
    """Write the layout; returns the manifest digest."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers, diff_ids = [], []
    for tar in (busybox_layer(Path(args.busybox)), users_layer()):
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        compressed = gzip.compress(tar, mtime=0)
        desc = write_blob(dest, compressed)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **desc})
    config = json.dumps(image_config(diff_ids, args), sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **write_blob(dest, config),
        },
        "layers": layers,
    }
    manifest_desc = write_blob(dest, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": args.tag},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index, sort_keys=True))
    return str(manifest_desc["digest"])


def dynamic_interpreter(binary: Path) -> str | None:
    """The ELF program interpreter (``/lib64/ld-linux-x86-64.so.2``) of ``binary``, or None.

    A static binary has none; a dynamic one would not start in an image without its libc.
    """
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF":
        return None
    order = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # ELF64: e_phoff, e_phentsize/e_phnum; p_offset at 8, p_filesz at 32
        word, phoff_at, count_at, offset_at, size_at = "Q", 0x20, 0x36, 8, 32
    else:  # ELF32
        word, phoff_at, count_at, offset_at, size_at = "I", 0x1C, 0x2A, 4, 16
    (phoff,) = struct.unpack_from(order + word, data, phoff_at)
    phentsize, phnum = struct.unpack_from(order + "HH", data, count_at)
    for index in range(phnum):
        header = phoff + index * phentsize
        if struct.unpack_from(order + "I", data, header)[0] != 3:  # PT_INTERP
            continue
        (offset,) = struct.unpack_from(order + word, data, header + offset_at)
        (size,) = struct.unpack_from(order + word, data, header + size_at)
        return data[offset : offset + size].rstrip(b"\0").decode(errors="replace")
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--busybox", default="/bin/busybox")
    parser.add_argument("--cmd", default='["sh"]', help="image Cmd as a JSON list")
    parser.add_argument("--stop-signal", default="")
    parser.add_argument("--label", action="append", default=[])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.access(args.busybox, os.X_OK):
        raise SystemExit(f"{args.busybox} is missing: install the Debian package busybox-static")
    interpreter = dynamic_interpreter(Path(args.busybox))
    if interpreter:
        raise SystemExit(
            f"{args.busybox} is linked dynamically (needs {interpreter}), so it cannot run in an "
            "image without its libraries: install the Debian package busybox-static."
        )
    print(write_layout(Path(args.dest), args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
