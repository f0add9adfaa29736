"""Hostile matrix, file targets (issue 16, item 3): a root-run syncer on a user-owned ~/.docker.

The user (uid 65534) owns their home and ``.docker`` and may put anything there: symlinks to
root's files, FIFOs, devices, huge files. Every row runs the real CLI (real OpenBao, real
registry) as root with two targets, the hostile one and another user's good one, and asserts:
the hostile target fails alone (exit 1, its path and the reason named, no traceback), the good
target is still written, and no file outside the good target changes (every entry of the
hostile home and of root's own ``.docker`` is hashed before and after).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import resource
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from syncer.filetarget import MAX_FILE_BYTES
from tests.support.operator import run_cmd
from tests.support.world import Result, World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # world, ngc
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root-run syncer")
USER = 65534
USER_DOC = {"auths": {"user.example": {"auth": "dXNlcjp1c2VyLXB3"}}, "credsStore": "pass"}


@dataclass
class Layout:
    """The hostile user's tree, root's own docker config, and another user's good target."""

    home: Path
    """The hostile user's home (uid 65534), holding ``.docker``."""
    docker: Path
    """``home/.docker``."""
    root_docker: Path
    """Root's ``.docker`` (root-owned, 0700)."""
    victim: Path
    """Root's ``config.json``, with root's logins."""
    good: Path
    """Another user's regular config.json: must be written in every row."""
    root_password: str

    @property
    def target(self) -> Path:
        return self.docker / "config.json"

    def sidecar(self, kind: str) -> Path:
        return self.docker / f".config.json.{kind}"

    def tree(self) -> dict[str, Any]:
        """Every entry under the hostile home and root's .docker: type, owner, mode, content hash."""
        return {**_tree(self.home), **_tree(self.root_docker)}


def _tree(top: Path) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for directory, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what: str = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                what = stat.filemode(st.st_mode)
            entries[path] = (what, st.st_uid, st.st_mode, st.st_ino)
    return entries


@contextlib.contextmanager
def _memory_bound(extra: int = 1 << 30) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``extra``, so a regression
    that reads /dev/zero fails with MemoryError instead of exhausting the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def _fifo_unblocker(path: Path, after: float) -> Iterator[None]:
    """After ``after`` seconds, open ``path`` for writing and close it again whenever a reader
    waits on it, so a regression that blocks on the FIFO ends (EOF) and fails the time bound
    instead of hanging the suite."""
    done = threading.Event()

    def unblock() -> None:
        if done.wait(after):
            return
        while not done.wait(0.05):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _user_dir(path: Path) -> Path:
    path.mkdir(parents=True, mode=0o755)
    os.chown(path, USER, USER)
    return path


def _user_file(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    os.chown(path, USER, USER)
    os.chmod(path, 0o600)


@pytest.fixture
def layout(world: World, tmp_path: Path) -> Layout:
    home = _user_dir(tmp_path / "home" / "user")
    docker = _user_dir(home / ".docker")
    _user_file(docker / "config.json", json.dumps(USER_DOC).encode())
    root_docker = tmp_path / "root" / ".docker"
    root_docker.mkdir(parents=True, mode=0o700)
    password = sentinel("root-login")
    world.secrets.add(password)
    auth = base64.b64encode(f"root:{password}".encode()).decode()
    victim = root_docker / "config.json"
    victim.write_text(json.dumps({"auths": {"root.example": {"auth": auth}}}))
    victim.chmod(0o600)
    good = _user_dir(tmp_path / "home" / "other" / ".docker") / "config.json"
    _user_file(good, b'{"auths": {}}\n')
    return Layout(home, docker, root_docker, victim, good, password)


def _run(world: World, ngc: dict[str, Any], layout: Layout, **target: Any) -> Result:
    """One ``syncer --once`` over the hostile target and the good one."""
    config = world.config([ngc], [{"file": str(layout.target), **target}, {"file": str(layout.good)}])
    return world.run(config)


def _assert_refused(result: Result, layout: Layout, ngc: dict[str, Any], *reason: str) -> None:
    """Exit 1, one failed line naming the hostile target and why; the good target written."""
    text = result.out + result.err
    assert result.code == 1, text
    assert f"target {layout.target}: failed" in result.out, text
    for words in reason:
        assert words in result.out, text
    assert "Traceback" not in text
    assert f"target {layout.good}: updated" in result.out, text
    assert ngc["host"] in json.loads(layout.good.read_text())["auths"]
    assert os.stat(layout.good).st_uid == USER


def _hostile_row(world: World, ngc: dict[str, Any], layout: Layout, make: Callable[[], None],
                 *reason: str, **target: Any) -> None:
    """Set up the attack, run, and check the safe outcome and that nothing changed."""
    make()
    before = layout.tree()
    result = _run(world, ngc, layout, **target)
    _assert_refused(result, layout, ngc, *reason)
    assert layout.tree() == before, "a file outside the good target changed"


def test_config_json_symlinked_to_a_root_file(world: World, ngc: dict[str, Any], layout: Layout) -> None:
    """Attack: ~/.docker/config.json -> root's config.json. Safe: refused, root's file unchanged."""
    def make() -> None:
        layout.target.unlink()
        layout.target.symlink_to(layout.victim)
        os.lchown(layout.target, USER, USER)

    _hostile_row(world, ngc, layout, make, "config.json is a symbolic link; refused")
    assert layout.victim.stat().st_uid == 0 and "root.example" in layout.victim.read_text()


def test_dangling_symlink_with_create(world: World, ngc: dict[str, Any], layout: Layout) -> None:
    """Attack: config.json -> a missing file in root's .docker, create = true. Safe: refused,
    nothing is created where the link points."""
    planted = layout.root_docker / "planted.json"

    def make() -> None:
        layout.target.unlink()
        layout.target.symlink_to(planted)

    _hostile_row(world, ngc, layout, make, "config.json is a symbolic link; refused", create=True)
    assert not planted.exists()


def test_symlinked_docker_directory(world: World, ngc: dict[str, Any], layout: Layout) -> None:
    """Attack: ~/.docker -> root's .docker (a link the user made). Safe: refused, even with
    create = true; nothing written in root's directory."""
    def make() -> None:
        for entry in layout.docker.iterdir():
            entry.unlink()
        layout.docker.rmdir()
        layout.docker.symlink_to(layout.root_docker, target_is_directory=True)
        os.lchown(layout.docker, USER, USER)

    _hostile_row(world, ngc, layout, make, ".docker is a symbolic link another user could have made",
                 create=True)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["config.json", ".config.json.syncer-state", ".config.json.previous"])
def test_fifo_as_config_or_bookkeeping(world: World, ngc: dict[str, Any], layout: Layout, name: str) -> None:
    """Attack: a FIFO (nobody ever writes to it) as config.json or as a bookkeeping file. Safe:
    no hang (opened non-blocking, refused on fstat), refused quickly."""
    def make() -> None:
        path = layout.docker / name
        path.unlink(missing_ok=True)
        os.mkfifo(path, 0o600)

    started = time.monotonic()
    with _fifo_unblocker(layout.docker / name, after=5.0):
        _hostile_row(world, ngc, layout, make, f"{name} is a FIFO, not a regular file; refused")
    assert time.monotonic() - started < 5, "blocked on the FIFO"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["config.json", ".config.json.previous"])
def test_dev_zero_as_config_or_bookkeeping(world: World, ngc: dict[str, Any], layout: Layout,
                                           name: str) -> None:
    """Attack: a character device reading endless zeros (/dev/zero's numbers) as config.json
    or bookkeeping. Safe: refused before reading a byte; no memory growth, no hang."""
    def make() -> None:
        path = layout.docker / name
        path.unlink(missing_ok=True)
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))

    started = time.monotonic()
    with _memory_bound():
        _hostile_row(world, ngc, layout, make, f"{name} is a character device, not a regular file; refused")
    assert time.monotonic() - started < 5


@pytest.mark.timeout(20)
def test_symlink_to_dev_zero_as_state(world: World, ngc: dict[str, Any], layout: Layout) -> None:
    """Attack: .config.json.syncer-state -> /dev/zero. Safe: the link is not followed; refused."""
    def make() -> None:
        layout.sidecar("syncer-state").symlink_to("/dev/zero")

    with _memory_bound():
            _hostile_row(world, ngc, layout, make, ".config.json.syncer-state is a symbolic link; refused")


def _rollback_refused(world: World, ngc: dict[str, Any], layout: Layout, reason: str) -> None:
    """``syncer rollback --file`` refuses; the user's file never receives root's logins."""
    before = layout.tree()
    config = world.config([ngc], [{"file": str(layout.target)}])
    result = run_cmd(world, "rollback", config, "--file", str(layout.target))
    text = result.out + result.err
    assert result.code == 1, text
    assert f"rollback: file {layout.target}: " in result.err and reason in result.err, text
    assert "Traceback" not in text
    assert layout.tree() == before
    assert "root.example" not in layout.target.read_text()
    assert layout.root_password not in layout.target.read_text()


def test_previous_symlinked_to_root_config_then_rollback(world: World, ngc: dict[str, Any],
                                                         layout: Layout) -> None:
    """Attack (high): .config.json.previous -> root's config.json, then `syncer rollback
    --file`. Safe: refused; root's logins are not copied into the user's file."""
    layout.sidecar("previous").symlink_to(layout.victim)
    _rollback_refused(world, ngc, layout, ".config.json.previous is a symbolic link; refused")


def test_previous_hard_linked_to_root_config_then_rollback(world: World, ngc: dict[str, Any],
                                                           layout: Layout) -> None:
    """Attack: .config.json.previous as a hard link to root's config.json (the same inode; a
    kernel without protected_hardlinks lets a user make one). Safe: refused, nothing copied."""
    os.link(layout.victim, layout.sidecar("previous"))
    _rollback_refused(world, ngc, layout, ".config.json.previous has 2 hard links")


def test_oversized_config_json(world: World, ngc: dict[str, Any], layout: Layout) -> None:
    """Attack: a valid but huge config.json (over the 4 MiB cap). Safe: refused with a clear
    error and not overwritten."""
    def make() -> None:
        padding = "x" * MAX_FILE_BYTES
        _user_file(layout.target, json.dumps({**USER_DOC, "padding": padding}).encode())

    _hostile_row(world, ngc, layout, make, f"config.json is larger than {MAX_FILE_BYTES} bytes; refused")


def test_documented_use_keeps_owner_and_mode_and_rollback_works(world: World, ngc: dict[str, Any],
                                                                layout: Layout, tmp_path: Path) -> None:
    """The documented use survives: root keeps a user's own regular config.json up to date
    (owner 65534 kept, mode 0600), rollback restores it, and a directory link only root could
    have made (like /home -> /var/home) is still followed."""
    os.chmod(layout.target, 0o644)
    original = layout.target.read_bytes()
    alias = tmp_path / "ci-home"  # root's own link, in root-owned directories: trusted
    alias.symlink_to(layout.docker, target_is_directory=True)
    config = world.config([ngc], [{"file": str(alias / "config.json")}])
    result = world.run(config)
    assert result.code == 0, result.out + result.err
    doc = json.loads(layout.target.read_text())
    assert set(doc["auths"]) == {"user.example", ngc["host"]} and doc["credsStore"] == "pass"
    for path in (layout.target, layout.sidecar("previous"), layout.sidecar("syncer-state")):
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_mode & 0o777) == (USER, 0o600), path
    result = run_cmd(world, "rollback", config, "--file", str(alias / "config.json"))
    assert result.code == 0, result.out + result.err
    assert layout.target.read_bytes() == original and os.stat(layout.target).st_uid == USER
