"""Installing the daemon: planned files, idempotence, the launcher and helper link."""

import os
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay import install


def _plan(tmp_path: Path) -> install.InstallPlan:
    return install.plan_install(
        "/opt/py/bin/python3",
        lib_dir=str(tmp_path / "lib"),
        launcher=str(tmp_path / "bin/lapis-overlay"),
        helper=str(tmp_path / "sbin/mount.fuse.lapis-overlay"),
    )


def test_install_writes_everything_then_nothing(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert len(plan.changes) == len(install.SOURCES) + 2
    install.apply_install(plan)
    assert _plan(tmp_path).changes == []
    launcher = tmp_path / "bin/lapis-overlay"
    assert launcher.read_text().startswith("#!/opt/py/bin/python3\n")
    assert os.access(launcher, os.X_OK)
    assert (tmp_path / "sbin/mount.fuse.lapis-overlay").readlink() == launcher
    daemon = tmp_path / "lib" / install.PACKAGE / "daemon.py"
    assert "def main(" in daemon.read_text()


def test_changed_or_chmodded_file_is_rewritten(tmp_path: Path) -> None:
    install.apply_install(_plan(tmp_path))
    target = tmp_path / "lib" / install.PACKAGE / "options.py"
    target.write_text("# edited by hand\n")
    (tmp_path / "bin/lapis-overlay").chmod(0o700)
    assert sorted(_plan(tmp_path).changes) == sorted(
        [str(target), str(tmp_path / "bin/lapis-overlay")]
    )


def test_launcher_runs_the_installed_package(tmp_path: Path) -> None:
    text = install.launcher_text("/usr/bin/python3", "/usr/local/lib/lapis-layers")
    assert "sys.path.insert(0, '/usr/local/lib/lapis-layers')" in text
    assert f"from {install.PACKAGE}.daemon import main" in text
    assert "sys.exit(main())" in text


def test_mount_argv_uses_the_fuse_type() -> None:
    config = install.opts.OverlayConfig("/m n", ["/a:b"], "/u", "/w")
    argv = install.mount_argv(config)
    assert argv[:5] == ["mount", "-t", "fuse.lapis-overlay", "lapis-overlay", "/m n"]
    assert argv[6] == "lowerdir=/a\\:b,upperdir=/u,workdir=/w"


def test_dead_or_zombie_pids_are_not_alive() -> None:
    assert install.alive(os.getpid())
    assert not install.alive(2**22 + 12345)
