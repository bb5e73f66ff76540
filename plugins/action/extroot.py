# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Action plugin for lapis.layers.extroot: extroot over the router's busybox shell.

Every command goes through ``_low_level_execute_command``, so the router needs a
POSIX shell and busybox, never Python. Gather, decide, act: the gather scripts
read the router, :mod:`..module_utils.extroot` plans, :func:`run_plan` acts.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.lapis.layers.plugins.module_utils.extroot import (
    ARGUMENT_SPEC,
    FSTAB,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_IF,
    CommandResult,
    Context,
    DeviceFacts,
    ExtrootError,
    Options,
    Plan,
    Step,
    SystemFacts,
    check_openwrt,
    cleanup_command,
    device_gather_script,
    find_device,
    install_command,
    is_active,
    lock_command,
    missing_packages,
    parse_device,
    parse_system,
    plan_absent,
    plan_present,
    run_plan,
    system_gather_script,
)
from ansible_collections.lapis.layers.plugins.module_utils.uci import UciError

display = Display()
BOOT_MARKER = "/tmp/.lapis-extroot-booted"


def guard_exit_status(command: str) -> str:
    """Run ``command`` in a subshell and turn its exit status 255 into 254.

    The ssh connection plugin takes 255 for a failed connection and reports the
    host unreachable; opkg, for one, exits 255 when it cannot install a package.
    """
    return f"(\n{command}\n)\nrc=$?; [ $rc -ne 255 ] || rc=254; exit $rc"


class ActionModule(ActionBase):
    """Gather over the shell, plan in Python on the controller, act over the shell."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(
            argument_spec=ARGUMENT_SPEC,
            mutually_exclusive=MUTUALLY_EXCLUSIVE,
            required_if=REQUIRED_IF,
        )
        locked = False
        try:
            opts = Options.from_args(args)
            self._run_checked(lock_command(), "take the extroot lock")
            locked = True
            result.update(self._extroot(opts))
        except ExtrootError as exc:
            result.update(failed=True, msg=str(exc), **exc.details)
        except UciError as exc:
            result.update(failed=True, msg=f"{FSTAB} on the router is not valid UCI: {exc}")
        finally:
            if locked:
                self._shell(cleanup_command())
        return result

    # ------------------------------------------------------------ shell access

    def _shell(self, command: str) -> CommandResult:
        """Run one shell command on the router (no tty: stdout and stderr stay apart)."""
        display.vvv(f"extroot: running {command.splitlines()[0][:120]}", host=self._host())
        res = self._low_level_execute_command(guard_exit_status(command), sudoable=False)
        return CommandResult(int(res.get("rc", 1)), res.get("stdout", ""), res.get("stderr", ""))

    def _run_checked(self, command: str, what: str) -> CommandResult:
        res = self._shell(command)
        if res.rc != 0:
            raise ExtrootError(
                f"could not {what} on the router (rc={res.rc}): {res.stderr.strip()}",
                rc=res.rc,
                stdout=res.stdout,
                stderr=res.stderr,
            )
        return res

    def _host(self) -> str | None:
        return getattr(self._play_context, "remote_addr", None)

    # ------------------------------------------------------------ gather

    def _gather(self, opts: Options) -> tuple[SystemFacts, DeviceFacts | None]:
        facts = parse_system(self._run_checked(system_gather_script(), "gather facts").stdout)
        check_openwrt(facts)
        found = find_device(facts, opts)
        if found is None:
            return facts, None
        mountpoint = facts.mountpoint_of(found.path)
        script = device_gather_script(found.path, found, mountpoint)
        out = self._run_checked(script, f"inspect {found.path}").stdout
        device = parse_device(found.path, found, out)
        display.vvv(f"extroot: device {device}", host=self._host())
        return facts, device

    # ------------------------------------------------------------ decide and act

    def _extroot(self, opts: Options) -> dict[str, Any]:
        check = bool(self._task.check_mode)
        facts, device = self._gather(opts)
        installed = self._ensure_packages(opts, facts, device, check)
        if installed and not check:
            facts, device = self._gather(opts)
        ctx = Context(facts, device, opts, use_uci="uci" in facts.tools)
        plan = plan_present(ctx, str(uuid.uuid4())) if opts.state == "present" else plan_absent(ctx)
        display.vvv(f"extroot: plan {[s.name for s in plan.steps]}", host=self._host())
        if not check:
            run_plan(plan, self._shell)
        out = self._result(opts, plan, device, installed, check)
        if opts.reboot and plan.reboot_pending and not check:
            self._shell(cleanup_command())
            try:
                out.update(self._reboot(opts, device))
            except ExtrootError as exc:
                exc.details.setdefault("changed", out["changed"])
                exc.details.setdefault("reboot_pending", True)
                raise
        return out

    def _ensure_packages(
        self, opts: Options, facts: SystemFacts, device: DeviceFacts | None, check: bool
    ) -> list[str]:
        if opts.state != "present":
            return []
        info = device.info if device else None
        will_format = opts.format and not (
            info and info.type == opts.fstype and info.label == opts.format_label
        )
        found = device is not None and device.exists
        missing = missing_packages(facts, opts, will_format, found)
        if not missing:
            return []
        if not opts.install_packages:
            raise ExtrootError(
                f"the router lacks what extroot needs: {', '.join(missing)}. Set"
                " install_packages: true, or install them with opkg/apk first"
            )
        manager = facts.package_manager
        if manager is None:
            raise ExtrootError(
                f"cannot install {', '.join(missing)}: the router has neither opkg nor apk"
            )
        if check:
            return missing
        run_plan(Plan(steps=[Step("install", install_command(manager, missing))]), self._shell)
        return missing

    def _result(
        self,
        opts: Options,
        plan: Plan,
        device: DeviceFacts | None,
        installed: list[str],
        check: bool,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "changed": plan.changed or bool(installed),
            "device": device.path if device else None,
            "uuid": plan.uuid,
            "target": opts.target,
            "formatted": plan.formatted,
            "copied": plan.copied,
            "extroot_active": plan.active,
            "reboot_pending": plan.reboot_pending,
            "rebooted": False,
            "packages_installed": installed,
            "commands": plan.commands,
            "steps": [s.name for s in plan.steps if s.changes],
        }
        if plan.warnings:
            out["warnings"] = plan.warnings
        if self._task.diff:
            out["diff"] = {
                "before": plan.fstab_before,
                "after": plan.fstab_after,
                "before_header": FSTAB,
                "after_header": FSTAB,
            }
        del check
        return out

    # ------------------------------------------------------------ reboot

    def _reboot(self, opts: Options, device: DeviceFacts | None) -> dict[str, Any]:
        """Reboot, wait for a new boot (our /tmp marker gone), check where /overlay is."""
        self._run_checked(
            # Ansible appends "&& sleep 0": the command must not end with "&"
            f"touch {BOOT_MARKER} && ( (sleep 2; reboot) >/dev/null 2>&1 </dev/null & ); true",
            "start the reboot",
        )
        deadline = time.monotonic() + opts.reboot_timeout
        time.sleep(5)
        while time.monotonic() < deadline:
            try:
                self._connection.reset()
                res = self._shell(f"[ -e {BOOT_MARKER} ] && echo old-boot || echo new-boot")
            except AnsibleError as exc:
                display.vvv(f"extroot: waiting for the router: {exc}", host=self._host())
                time.sleep(3)
                continue
            if res.rc == 0 and "new-boot" in res.stdout:
                facts, _device = self._gather(Options(state="absent"))
                path = device.path if device else None
                active = is_active(facts, path, opts.target)
                wanted = opts.state == "present"
                if active != wanted:
                    where = "on" if wanted else "off"
                    raise ExtrootError(
                        f"the router rebooted but {opts.target} is not {where} {path};"
                        " read `logread | grep block` on the router for the reason",
                        rebooted=True,
                    )
                return {"rebooted": True, "reboot_pending": False, "extroot_active": active}
            time.sleep(3)
        raise ExtrootError(
            f"the router did not come back within reboot_timeout={opts.reboot_timeout}s"
        )
