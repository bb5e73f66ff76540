# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Dockerfile build executor: a plan (``dockerfile_plan``) built into the image store.

For every stage the target needs, in order:

- ``FROM`` an image of the store (its layers are the first lowers), an earlier stage,
  or ``scratch``;
- config-only steps add a history entry with ``empty_layer``; ``WORKDIR`` makes a
  layer only when it has to create its directory;
- ``RUN``, ``COPY`` and ``ADD`` mount the layers so far (kernel overlay) with a fresh
  upper, act in the mount (``build_run``, ``build_copy``), and the upper becomes the
  step's layer (``build_layer``): blob and layer directory go into the store.

Every step has a cache key (``dockerfile_plan.step_cache_key``) seeded with the base
image, the layer compression and ``source_date_epoch``; a cached step reuses its layer
and its history timestamp, so a rebuild with nothing changed gives the same digest.
The target stage is written as an OCI image (config with history and diff_ids,
manifest) and tagged with ``image_import.import_image``, which checks every layer
against its diff_id before it moves the tag.
"""

from __future__ import annotations

import contextlib
import platform as host_platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils import build_copy as bc
from ansible_collections.lapis.layers.plugins.module_utils import dockerfile_context as ctx
from ansible_collections.lapis.layers.plugins.module_utils import oci_runtime as rt
from ansible_collections.lapis.layers.plugins.module_utils.build_cache import (
    BuildCache,
    CacheRecord,
)
from ansible_collections.lapis.layers.plugins.module_utils.build_layer import (
    LayerBuildError,
    clean_overlay_xattrs,
    install_layer_dir,
    next_chain_id,
    write_layer_blob,
)
from ansible_collections.lapis.layers.plugins.module_utils.build_rootfs import (
    RootfsError,
    is_empty_dir,
    read_only_view,
    step_root,
)
from ansible_collections.lapis.layers.plugins.module_utils.build_run import RunError
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_instructions import (
    CopyInstr,
    Mount,
    RunInstr,
    WorkdirInstr,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_plan import (
    BuildPlan,
    ImageConfig,
    PlanStage,
    PlanStep,
    Platform,
    plan_build,
    step_cache_key,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    blobs_in_store_source,
    import_image,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    OCI_CONFIG,
    Descriptor,
    build_oci_manifest,
    canonical_json,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    ImageNotFound,
    Store,
    StoredImage,
    remove_tree,
)

STEP_ERRORS = (
    bc.CopyError,
    ctx.ContextError,
    RootfsError,
    LayerBuildError,
    rt.OCIRuntimeError,
    OSError,
)


class BuildError(Exception):
    """A build failed; the message names the step (file:line) and the cause."""

    def __init__(
        self,
        message: str,
        steps: list[dict[str, Any]] | None = None,
        output: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.steps = steps or []
        self.output = output or []


class BaseNotPulled(Exception):
    """Check mode met a base image that a real run would pull first."""


@dataclass
class BuildRequest:
    """The module's options, checked."""

    store: str
    context: str
    dockerfile_text: str
    dockerfile_name: str = "Dockerfile"
    dockerfile_path: str | None = None
    name: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    cache: bool = True
    source_date_epoch: int | None = None
    compression: str = "gzip"
    check_mode: bool = False
    pull: str = "missing"
    registry: dict[str, Any] | None = None  # the registry options (registry_spec)


@dataclass
class LayerRef:
    """A layer of an image being built."""

    digest: str
    diff_id: str
    media_type: str
    size: int
    chain_id: str


@dataclass
class StageResult:
    """An image in the making: layers, history, config, and the cache key of its last step."""

    key: str
    layers: list[LayerRef] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: ImageConfig = field(default_factory=ImageConfig)
    created: str = ""
    architecture: str = ""
    os: str = "linux"
    variant: str = ""

    def lowerdirs(self, store: Store) -> list[str]:
        """Layer directories topmost first, as overlay wants them."""
        return [str(store.lowerdir(layer.chain_id)) for layer in reversed(self.layers)]

    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    def copy(self) -> StageResult:
        return StageResult(
            key=self.key,
            layers=list(self.layers),
            history=[dict(h) for h in self.history],
            config=self.config,
            created=self.created,
            architecture=self.architecture,
            os=self.os,
            variant=self.variant,
        )


@dataclass
class BuildResult:
    """What the module returns."""

    changed: bool
    digest: str | None
    previous_digest: str | None
    reference: str
    steps: list[dict[str, Any]]
    output: list[dict[str, Any]]
    warnings: list[str]
    config_digest: str | None = None
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "digest": self.digest,
            "previous_digest": self.previous_digest,
            "reference": self.reference,
            "config_digest": self.config_digest,
            "steps": self.steps,
            "output": self.output,
        }


def timestamp(epoch: float) -> str:
    """RFC 3339 UTC with nanoseconds, as Docker and buildah write ``created``."""
    moment = datetime.fromtimestamp(int(epoch), tz=timezone.utc)
    nanos = round((epoch - int(epoch)) * 1e9)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{nanos:09d}Z" if nanos else "Z")


def _host_arch() -> str:
    return Platform.host().architecture or host_platform.machine()


class Builder:
    """One build: gather (plan, cache), decide (per step), act (run, copy, write layers)."""

    def __init__(self, request: BuildRequest) -> None:
        self.request = request
        self.store = Store(request.store)
        self.cache = BuildCache(self.store)
        self.context = Path(request.context)
        self.matcher = ctx.load_ignore_matcher(request.context, request.dockerfile_path)
        self.results: dict[int, StageResult] = {}
        self.steps: list[dict[str, Any]] = []
        self.output: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.runtime: rt.OCIRuntime | None = None
        self.work: Path | None = None
        self.missed = False
        self.fetched: dict[str, bc.Fetched] = {}
        self.plan_: BuildPlan | None = None

    # -- gather -------------------------------------------------------------------------------

    def base_image(self, ref: str) -> StoredImage:
        try:
            return self.store.resolve(ref)
        except ImageNotFound:
            if self.request.pull == "never" or self.request.registry is None:
                why = "pull is never" if self.request.pull == "never" else "no registry options"
                raise BuildError(
                    f"image {ref} is not in the store {self.store.root} and {why}; "
                    "import or pull it first (lapis.layers.image)"
                ) from None
        self.pull_base(ref)
        return self.store.resolve(ref)

    def pull_base(self, ref: str) -> None:
        """Fetch a missing base image (``FROM``, ``COPY --from``) through the registry pull.

        In check mode the reference is only resolved at its registry (so an unknown tag or
        bad credentials fail here too); the build then stops with ``BaseNotPulled``.
        """
        # Imported here: a build whose bases are all present never loads the registry client.
        from ansible_collections.lapis.layers.plugins.module_utils.registry_store import (  # noqa: PLC0415
            pull_to_store,
            registry_options,
        )
        from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (  # noqa: PLC0415
            RegistryError,
        )

        try:
            options = registry_options(self.request.registry or {})
            transfer = pull_to_store(self.store, ref, options, check_mode=self.request.check_mode)
        except (RegistryError, ValueError) as exc:
            raise BuildError(
                f"base image {ref} is not in the store and pulling it failed: {exc}"
            ) from exc
        self.steps.append(
            {
                "stage": None,
                "instruction": f"pull {transfer.reference}",
                "status": "would pull" if self.request.check_mode else "pulled",
                "layer": transfer.digest,
                "size": transfer.bytes,
                "seconds": round(transfer.seconds, 3),
            }
        )
        if self.request.check_mode:
            raise BaseNotPulled(transfer.reference)

    def resolve_base(self, ref: str, platform: Platform) -> ImageConfig:
        image = self.base_image(ref)
        return ImageConfig.from_oci(image.config.get("config") or {})

    def plan(self) -> BuildPlan:
        return plan_build(
            self.request.dockerfile_text,
            filename=self.request.dockerfile_name,
            build_args=self.request.build_args,
            target=self.request.target,
            resolve_base=self.resolve_base,
        )

    def seed(self, base_key: str) -> str:
        doc = {
            "base": base_key,
            "compression": self.request.compression,
            "source_date_epoch": self.request.source_date_epoch,
        }
        return sha256_digest(canonical_json(doc))

    def now(self) -> str:
        if self.request.source_date_epoch is not None:
            return timestamp(self.request.source_date_epoch)
        return timestamp(time.time())

    # -- stages -------------------------------------------------------------------------------

    def start_stage(self, stage: PlanStage) -> StageResult:
        host = Platform.host()
        if (stage.platform.os, stage.platform.architecture) != (host.os, host.architecture):
            raise BuildError(
                f"{stage.loc.filename}:{stage.loc.start_line}: stage {stage.name or stage.index} "
                f"is for platform {stage.platform}; this builder only builds for the host's "
                f"platform {host}"
            )
        if stage.base_stage is not None:
            result = self.results[stage.base_stage].copy()
            result.key = self.seed(result.key)
            return result
        if stage.is_scratch:
            return StageResult(key=self.seed("scratch"), architecture=_host_arch())
        image = self.base_image(stage.base)
        if not self.request.check_mode:
            self.store.ensure_layers(image)
        doc = image.config
        return StageResult(
            key=self.seed(image.manifest_digest),
            layers=[
                LayerRef(x.digest, x.diff_id, x.media_type, x.size, x.chain_id)
                for x in image.layers
            ],
            history=[dict(h) for h in doc.get("history") or []],
            config=ImageConfig.from_oci(doc.get("config") or {}),
            created=str(doc.get("created") or ""),
            architecture=str(doc.get("architecture") or _host_arch()),
            os=str(doc.get("os") or "linux"),
            variant=str(doc.get("variant") or ""),
        )

    def build_stage(self, stage: PlanStage) -> StageResult:
        result = self.start_stage(stage)
        for step in stage.steps:
            if self.missed:
                break
            self.do_step(stage, step, result)
        result.config = stage.config
        return result

    # -- steps --------------------------------------------------------------------------------

    def sources_digest(self, step: PlanStep) -> str | None:
        """Content digest of what the step reads; None when unknown without acting."""
        instr = step.instruction
        parts: list[str] | None = []
        if isinstance(instr, CopyInstr):
            parts = self.copy_sources(step, instr)
        elif isinstance(instr, RunInstr):
            if instr.security == "insecure":
                raise BuildError("RUN --security=insecure is not supported by this builder")
            parts = [self.mount_digest(m, step) for m in instr.mounts if m.type == "bind"]
        if parts is None:
            return None
        return sha256_digest("\n".join(parts).encode()) if parts else ""

    def copy_sources(self, step: PlanStep, instr: CopyInstr) -> list[str] | None:
        parts: list[str] = []
        if step.source_stage is not None:
            parts.append(self.results[step.source_stage].key)
        elif step.source_image:
            parts.append(self.base_image(step.source_image).manifest_digest)
        else:
            matches = ctx.instruction_sources(str(self.context), instr, self.matcher)
            parts.append(ctx.sources_digest(matches))
        for url in step.remote_sources:
            if not url.startswith(("http://", "https://")) or url.endswith(".git"):
                raise BuildError(
                    f"ADD {url}: Git sources are not supported by this builder; expected an "
                    "http(s) URL of a file (clone the repository into the context instead)"
                )
            if instr.checksum:
                parts.append(instr.checksum)
            elif self.request.check_mode:
                return None
            else:
                parts.append(self.fetch(url, "").digest)
        return parts

    def mount_digest(self, mount: Mount, step: PlanStep) -> str:
        if mount.from_:
            index = self.stage_of(mount.from_, step)
            if index is not None:
                return self.results[index].key
            return self.base_image(mount.from_).manifest_digest
        matches = ctx.context_sources(str(self.context), [mount.source or "."], self.matcher)
        return ctx.sources_digest(matches)

    def stage_of(self, name: str, step: PlanStep) -> int | None:
        if self.plan_ is None:
            return None
        for index in step.mount_stages:
            stage = self.plan_.stages[index]
            if name.lower() in (stage.name, str(index)):
                return index
        return None

    def fetch(self, url: str, checksum: str) -> bc.Fetched:
        if url not in self.fetched:
            self.fetched[url] = bc.fetch_url(url, self.workdir(), checksum)
        fetched = self.fetched[url]
        bc.check_checksum(url, fetched.digests, checksum)
        return fetched

    def workdir(self) -> Path:
        if self.work is None:
            self.store.init()
            (self.store.root / "build").mkdir(mode=0o700, exist_ok=True)
            self.work = Path(tempfile.mkdtemp(prefix="build-", dir=self.store.tmp_dir))
        return self.work

    def do_step(self, stage: PlanStage, step: PlanStep, result: StageResult) -> None:
        loc = step.instruction.loc
        where = f"{loc.filename}:{loc.start_line}: {step.created_by}"
        try:
            self._do_step(stage, step, result)
        except RunError as exc:
            raise RunError(f"{where}: {exc}", exc.rc, exc.output) from exc
        except STEP_ERRORS as exc:
            raise BuildError(f"{where}: {exc}") from exc

    def _do_step(self, stage: PlanStage, step: PlanStep, result: StageResult) -> None:
        started = time.monotonic()
        report: dict[str, Any] = {
            "stage": stage.index,
            "instruction": step.created_by,
            "status": "cached",
            "layer": None,
            "size": 0,
        }
        digest = self.sources_digest(step)
        key = step_cache_key(result.key, step, digest or "")
        record = self.cache.get(key) if self.request.cache and digest is not None else None
        if record is None and self.request.check_mode:
            report["status"] = "would build"
            self.steps.append(report)
            self.missed = True
            return
        if record is None:
            record = self.execute(step, result, key)
            report["status"] = "built"
        self.apply(record, step, result)
        if record.layer is not None:
            report["layer"] = record.layer.digest
            report["size"] = record.layer.size
        report["seconds"] = round(time.monotonic() - started, 3)
        self.steps.append(report)

    def apply(self, record: CacheRecord, step: PlanStep, result: StageResult) -> None:
        entry: dict[str, Any] = {"created": record.created, "created_by": step.created_by}
        if record.layer is None:
            entry["empty_layer"] = True
        else:
            layer = record.layer
            result.layers.append(
                LayerRef(layer.digest, layer.diff_id, layer.media_type, layer.size, record.chain_id)
            )
        result.history.append(entry)
        result.key = record.key
        result.created = record.created

    # -- act ----------------------------------------------------------------------------------

    def execute(self, step: PlanStep, result: StageResult, key: str) -> CacheRecord:
        created = self.now()
        if step.kind == "config" and not isinstance(step.instruction, WorkdirInstr):
            record = CacheRecord(key, created)
        else:
            record = self.layer_step(step, result, key, created)
        self.cache.put(record)
        return record

    def layer_step(
        self, step: PlanStep, result: StageResult, key: str, created: str
    ) -> CacheRecord:
        work = Path(tempfile.mkdtemp(prefix="step-", dir=self.workdir()))
        try:
            with step_root(work, result.lowerdirs(self.store)) as root:
                self.act(step, root.merged, root.upper, work)
            upper = work / "upper"
            if isinstance(step.instruction, WorkdirInstr) and is_empty_dir(upper):
                return CacheRecord(key, created)
            clean_overlay_xattrs(str(upper))
            layer = write_layer_blob(
                self.store, str(upper), self.request.compression, self.request.source_date_epoch
            )
            chain = next_chain_id(result.diff_ids(), layer.diff_id)
            install_layer_dir(self.store, chain, layer, str(upper))
            return CacheRecord(key, created, layer, chain)
        finally:
            with contextlib.suppress(OSError):
                remove_tree(work)

    def act(self, step: PlanStep, merged: Path, upper: Path, work: Path) -> None:
        instr = step.instruction
        if isinstance(instr, WorkdirInstr):
            bc.ensure_dir(merged, step.config.working_dir or "/", None)
        elif isinstance(instr, CopyInstr):
            self.copy(step, instr, merged, work)
        elif isinstance(instr, RunInstr):
            self.run(step, instr, merged, upper, work)

    def copy(self, step: PlanStep, instr: CopyInstr, merged: Path, work: Path) -> None:
        owner = bc.resolve_chown(str(merged), instr.chown)
        epoch = self.request.source_date_epoch
        mtime = epoch if epoch is not None else int(time.time())
        for doc in instr.heredoc_sources:
            bc.write_heredoc(
                merged,
                step.dest,
                doc.name,
                doc.content,
                owner=owner,
                chmod=instr.chmod,
                mtime=mtime,
            )
        for url in step.remote_sources:
            fetched = self.fetch(url, instr.checksum)
            bc.write_fetched(merged, step.dest, fetched, owner, instr.chmod)
        local = [s for s in instr.sources if s not in step.remote_sources]
        if not local:
            return
        with self.source_root(step, work) as (src_root, keep_owner, matcher):
            matches = ctx.context_sources(str(src_root), local, matcher, instr.excludes)
            bc.copy_matches(
                merged,
                src_root,
                matches,
                step.dest,
                owner=owner,
                chmod=instr.chmod,
                keep_owner=keep_owner,
                parents=instr.parents,
                extract=instr.add,
            )

    @contextlib.contextmanager
    def source_root(
        self, step: PlanStep, work: Path
    ) -> Iterator[tuple[Path, bool, ctx.IgnoreMatcher | None]]:
        if step.source_stage is not None:
            lowers = self.results[step.source_stage].lowerdirs(self.store)
        elif step.source_image:
            lowers = self.store.ensure_layers(self.base_image(step.source_image))
        else:
            yield self.context, False, self.matcher
            return
        with read_only_view(work / "from", lowers) as view:
            yield view, True, None

    def run(self, step: PlanStep, instr: RunInstr, merged: Path, upper: Path, work: Path) -> None:
        from ansible_collections.lapis.layers.plugins.module_utils.build_run import (  # noqa: PLC0415 -- keeps cached builds free of runtime_spec/jsonschema imports
            RunRequest,
            run_step,
        )

        if self.runtime is None:
            binary = rt.find_runtime("auto")
            root = self.store.root / "build" / "runtime"
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.runtime = rt.OCIRuntime(binary, str(root))
        request = RunRequest(
            argv=step.argv,
            env=step.env + step.proxy_env,
            user=step.user,
            workdir=step.workdir,
            network=instr.network or "default",
            mounts=list(instr.mounts),
            inline_files=step.inline_files,
        )
        with contextlib.ExitStack() as stack:

            def bind_source(mount: Mount) -> Path:
                if mount.from_:
                    index = self.stage_of(mount.from_, step)
                    if index is not None:
                        lowers = self.results[index].lowerdirs(self.store)
                    else:
                        lowers = self.store.ensure_layers(self.base_image(mount.from_))
                    view_work = Path(tempfile.mkdtemp(prefix="mount-", dir=work))
                    root = stack.enter_context(read_only_view(view_work, lowers))
                else:
                    root = self.context
                return Path(bc.resolve_in_root(str(root), mount.source or "/"))

            outcome = run_step(
                self.runtime,
                request,
                rootfs=merged,
                upper=upper,
                work=work,
                store_root=self.store.root,
                bind_source=bind_source,
            )
        self.output.append({"instruction": step.created_by, "output": outcome.output})

    # -- the image ------------------------------------------------------------------------------

    def image_config(self, result: StageResult) -> dict[str, Any]:
        config = result.config.to_oci()
        if self.request.labels:
            current = config.get("Labels")
            labels = dict(current) if isinstance(current, dict) else {}
            labels.update(self.request.labels)
            config["Labels"] = labels
        doc: dict[str, Any] = {
            "created": result.created or self.now(),
            "architecture": result.architecture or _host_arch(),
            "os": result.os or "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": result.diff_ids()},
            "history": result.history,
        }
        if result.variant:
            doc["variant"] = result.variant
        if result.config.author:
            doc["author"] = result.config.author
        return doc

    def manifest(self, result: StageResult) -> tuple[bytes, bytes]:
        config_bytes = canonical_json(self.image_config(result))
        config_desc = Descriptor(OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes))
        layers = [Descriptor(x.media_type, x.digest, x.size) for x in result.layers]
        return config_bytes, build_oci_manifest(config_desc, layers)

    # -- the whole build --------------------------------------------------------------------------

    def build(self) -> BuildResult:
        try:
            return self.build_plan()
        except BaseNotPulled:
            # Check mode: without the base, nothing after FROM can be known; the tag would move.
            return self.result(None, self.previous_digest())

    def previous_digest(self) -> str | None:
        reference = self.request.name
        previous = self.store.lookup(reference) if reference and self.store.exists() else None
        return previous.digest if previous is not None else None

    def result(
        self, digest: str | None, previous: str | None, config: bytes | None = None
    ) -> BuildResult:
        """The module's result; ``digest`` None: check mode could not know it (changed)."""
        return BuildResult(
            digest is None or digest != previous,
            digest,
            previous,
            self.request.name,
            self.steps,
            self.output,
            self.warnings,
            sha256_digest(config) if config is not None else None,
            complete=digest is not None,
        )

    def build_plan(self) -> BuildResult:
        plan = self.plan_ = self.plan()
        self.warnings.extend(plan.warnings)
        if plan.unused_build_args:
            self.warnings.append(
                "build args not consumed by the Dockerfile: " + ", ".join(plan.unused_build_args)
            )
        previous_digest = self.previous_digest()
        try:
            for index in plan.needed:
                self.results[index] = self.build_stage(plan.stages[index])
                if self.missed:
                    return self.result(None, previous_digest)
            config_bytes, manifest = self.manifest(self.results[plan.target])
            digest = sha256_digest(manifest)
            if not self.request.check_mode:
                self.store.ingest_bytes(config_bytes)
                imported = import_image(
                    self.store, self.request.name, blobs_in_store_source(self.store, manifest)
                )
                previous_digest = imported.previous_digest
            return self.result(digest, previous_digest, config_bytes)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        for fetched in self.fetched.values():
            with contextlib.suppress(OSError):
                Path(fetched.path).unlink()
        if self.work is not None:
            with contextlib.suppress(OSError):
                remove_tree(self.work)


def build_image(request: BuildRequest) -> BuildResult:
    """Build ``request`` into its store (or, in check mode, say whether that would change)."""
    builder = Builder(request)
    store = builder.store
    if request.check_mode and not store.exists():
        return builder.build()
    store.init()
    with store.lock(shared=True):
        try:
            return builder.build()
        except BuildError as exc:
            exc.steps = builder.steps
            exc.output = builder.output
            raise
