# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Action plugin for lapis.layers.image_copy: send a host only the blobs it lacks.

Gather: open the image on the controller, then run the module on the host in
``inventory`` mode (which blobs its store has, which chunks an earlier run staged).
Decide: :func:`..module_utils.image_copy.plan_copy`. Act: ``put_file`` each missing
chunk into the host's staging directory, then run the module in ``commit`` mode, which
checks every digest and imports the image. Check mode stops after the inventory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.lapis.layers.plugins.module_utils.image_copy import (
    CopyError,
    CopyPlan,
    HostInventory,
    chunk_name,
    chunk_spans,
    parse_chunk_size,
    plan_copy,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_copy_source import (
    SOURCE_KINDS,
    ChunkFiles,
    ControllerImage,
    open_controller_image,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_import import SourceError
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    ManifestError,
    digest_hex,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    parse_image_ref,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import StoreError

display = Display()
MODULE = "lapis.layers.image_copy"
USER_SPEC: dict[str, Any] = {
    "src": {"type": "str", "required": True},
    "source": {"type": "str", "default": "auto", "choices": list(SOURCE_KINDS)},
    "source_ref": {"type": "str"},
    "name": {"type": "str", "required": True},
    "controller_store": {"type": "path", "default": "/var/lib/lapis"},
    "chunk_size": {"type": "str", "default": "32m"},
    "store": {"type": "path", "default": "/var/lib/lapis"},
}
ERRORS = (CopyError, SourceError, StoreError, ManifestError, InvalidReference, OSError)


class ActionModule(ActionBase):
    """Inventory on the host, plan on the controller, send chunks, commit on the host."""

    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(USER_SPEC)

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=USER_SPEC)
        image: ControllerImage | None = None
        try:
            reference = str(parse_image_ref(args["name"]))
            chunk_size = parse_chunk_size(args["chunk_size"])
            image = open_controller_image(
                args["source"],
                args["src"],
                args["source_ref"],
                self._local_path(args),
                args["controller_store"],
            )
            result.update(self._copy(args, image, reference, chunk_size, task_vars or {}))
        except ERRORS as exc:
            result.update(failed=True, msg=f"image_copy {args['name']} from {args['src']}: {exc}")
        finally:
            if image is not None:
                image.close()
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    # ------------------------------------------------------------ gather

    def _local_path(self, args: dict[str, Any]) -> Path | None:
        """``src`` as a path on the controller, or None when it names no file there."""
        if args["source"] == "store":
            return None
        src = Path(args["src"]).expanduser()
        if src.is_absolute():
            return src if src.exists() else None
        try:
            return Path(self._find_needle("files", str(src)))
        except AnsibleError:
            return None

    def _module(
        self, mode: str, args: dict[str, Any], image: ControllerImage, task_vars: dict[str, Any]
    ) -> dict[str, Any]:
        module_args = {
            "name": args["name"],
            "store": args["store"],
            "chunk_size": args["chunk_size"],
            "mode": mode,
            "manifest": image.manifest.decode(),
            "media_type": image.media_type,
            "blobs": [ref.to_dict() for ref in image.refs],
        }
        owner = self._staging_owner()
        if owner:
            module_args["staging_owner"] = owner
        display.vvv(f"image_copy: {mode} on the host", host=self._host())
        done: dict[str, Any] = self._execute_module(
            module_name=MODULE, module_args=module_args, task_vars=task_vars
        )
        if done.get("failed") or done.get("unreachable"):
            raise _HostFailed(done)
        return done

    def _staging_owner(self) -> str | None:
        user = self._get_remote_user()
        if self._play_context.become and user and user != "root":
            return str(user)
        return None

    def _host(self) -> str | None:
        return getattr(self._play_context, "remote_addr", None)

    # ------------------------------------------------------------ decide and act

    def _copy(
        self,
        args: dict[str, Any],
        image: ControllerImage,
        reference: str,
        chunk_size: int,
        task_vars: dict[str, Any],
    ) -> dict[str, Any]:
        try:
            found = self._module("inventory", args, image, task_vars)
        except _HostFailed as exc:
            return exc.result
        inventory = HostInventory.from_dict(found["inventory"])
        plan = plan_copy(image.refs, inventory, image.digest, chunk_size)
        summary = _summary(reference, image, inventory, plan)
        if not plan.changed or self._play_context.check_mode:
            summary["changed"] = plan.changed
            return summary

        summary["chunks_sent"], summary["bytes_sent"] = self._send(
            image, plan, inventory.staging, chunk_size
        )
        summary["blobs_sent"] = plan.digests_to_send
        try:
            committed = self._module("commit", args, image, task_vars)
        except _HostFailed as exc:
            return {**summary, **exc.result}
        summary.update(
            changed=bool(committed.get("changed")) or summary["bytes_sent"] > 0,
            digest=committed.get("manifest_digest", image.digest),
            previous_digest=committed.get("previous_digest"),
            layers_unpacked=committed.get("layers_unpacked", []),
            removed_blobs=committed.get("removed_blobs", []),
            removed_layers=committed.get("removed_layers", []),
        )
        for warning in committed.get("warnings", []):
            display.warning(warning)
        return summary

    def _send(
        self, image: ControllerImage, plan: CopyPlan, staging: str, chunk_size: int
    ) -> tuple[int, int]:
        """put_file every planned chunk; return (chunks, bytes) sent."""
        chunks = sent = 0
        for blob, indexes in plan.send:
            files = ChunkFiles(image, image.descriptor(blob.digest), None)
            spans = chunk_spans(blob.size, chunk_size)
            folder = f"{staging}/{digest_hex(blob.digest)}"
            for index in indexes:
                offset, length = spans[index]
                remote = f"{folder}/{chunk_name(index, chunk_size)}"
                with files.chunk(offset, length) as local:
                    display.vvv(f"image_copy: put {length} bytes to {remote}", host=self._host())
                    self._connection.put_file(local, remote)
                chunks += 1
                sent += length
        return chunks, sent


class _HostFailed(Exception):
    """The module failed on the host (or the host was unreachable): its result is ours."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg", "the module failed on the host"))
        self.result = result


def _summary(
    reference: str, image: ControllerImage, inventory: HostInventory, plan: CopyPlan
) -> dict[str, Any]:
    return {
        "changed": False,
        "reference": reference,
        "digest": image.digest,
        "previous_digest": inventory.current_digest,
        "bytes_sent": 0,
        "bytes_to_send": plan.bytes_to_send,
        "chunks_sent": 0,
        "blobs_sent": [],
        "blobs_skipped": list(plan.skipped),
        "blobs_resumed": list(plan.resumed),
        "bytes_resumed": plan.bytes_resumed,
        "layers_unpacked": [],
        "removed_blobs": [],
        "removed_layers": [],
        "source": image.description,
        "diff": {
            "before": {"reference": reference, "manifest_digest": inventory.current_digest},
            "after": {"reference": reference, "manifest_digest": image.digest},
        },
    }
