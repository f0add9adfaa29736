"""Opening, reading and replacing files by descriptor: links someone else could have made are
refused, only single-link regular files of bounded size are read, and a replace is atomic, 0600,
and never writes through a link."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncer import safefs
from syncer.safefs import UnsafeFileError, open_dir, read_regular, replace

NOBODY = 65534


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A directory only we can write to, inside a trusted path (pytest's 0700 tmp under sticky /tmp)."""
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def opened(home: Path) -> Iterator[int]:
    fd = open_dir(str(home))
    yield fd
    os.close(fd)


def test_open_dir_creates_missing_directories_0700_only_when_asked(home: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_dir(str(home / "a" / "b"))
    os.close(open_dir(str(home / "a" / "b"), create=True))
    assert (home / "a" / "b").is_dir() and (home / "a").stat().st_mode & 0o777 == 0o700


def test_dot_dot_is_walked_by_name(home: Path) -> None:
    (home / "x").mkdir()
    (home / "y").mkdir()
    fd = open_dir(str(home / "x" / ".." / "y"))
    try:
        assert os.fstat(fd).st_ino == (home / "y").stat().st_ino
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's symlink needs root")
def test_a_symlink_another_user_made_is_refused_ours_is_followed(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / "ours").symlink_to(elsewhere)
    fd = open_dir(str(home / "ours"))
    assert os.fstat(fd).st_ino == elsewhere.stat().st_ino
    os.close(fd)
    (home / "theirs").symlink_to(elsewhere)
    os.lchown(home / "theirs", NOBODY, NOBODY)
    with pytest.raises(UnsafeFileError) as info:
        open_dir(str(home / "theirs"))
    assert info.value.kind == "symlink"


def test_a_symlink_below_a_directory_others_may_write_is_refused(home: Path, tmp_path: Path) -> None:
    shared = home / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone could have replaced the link
    (shared / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        open_dir(str(shared / "link"))


def test_symlink_loops_end(home: Path) -> None:
    (home / "loop").symlink_to(home / "loop2")
    (home / "loop2").symlink_to(home / "loop")
    with pytest.raises(OSError, match="symbolic links"):
        open_dir(str(home / "loop"))


def test_read_regular(home: Path, opened: int) -> None:
    assert read_regular(opened, "missing", 100) is None
    (home / "config.json").write_bytes(b"{}")
    st, content = read_regular(opened, "config.json", 100) or (None, b"")
    assert content == b"{}" and st is not None and st.st_size == 2


@pytest.mark.parametrize(("make", "kind"), [
    (lambda home: (home / "f").symlink_to(home / "real"), "symlink"),
    (lambda home: os.mkfifo(home / "f"), "not_regular"),
    (lambda home: os.link(home / "real", home / "f"), "not_regular"),  # may be another user's file
    (lambda home: (home / "f").write_bytes(b"x" * 101), "too_large"),
])
def test_read_regular_refuses(home: Path, opened: int, make: object, kind: str) -> None:
    (home / "real").write_bytes(b"secret of someone else")
    make(home)  # type: ignore[operator]
    with pytest.raises(UnsafeFileError) as info:
        read_regular(opened, "f", 100)
    assert info.value.kind == kind


def test_replace_is_0600_and_replaces_a_link_instead_of_writing_through_it(home: Path,
                                                                          opened: int) -> None:
    victim = home / "victim"
    victim.write_bytes(b"untouched")
    (home / "config.json").symlink_to(victim)
    old = os.umask(0)
    try:
        replace(opened, "config.json", b'{"auths": {}}')
    finally:
        os.umask(old)
    assert victim.read_bytes() == b"untouched"
    assert not (home / "config.json").is_symlink()
    assert (home / "config.json").read_bytes() == b'{"auths": {}}'
    assert (home / "config.json").stat().st_mode & 0o777 == safefs.FILE_MODE


def test_a_failed_precondition_leaves_the_old_file_and_no_temporary(home: Path, opened: int) -> None:
    (home / "config.json").write_bytes(b"old")

    def changed_meanwhile() -> None:
        raise OSError("the file changed since it was read")

    with pytest.raises(OSError, match="changed"):
        replace(opened, "config.json", b"new", before_rename=changed_meanwhile)
    assert (home / "config.json").read_bytes() == b"old"
    assert sorted(p.name for p in home.iterdir()) == ["config.json"]


def test_stale_temporaries_are_removed_fresh_ones_kept(home: Path, opened: int) -> None:
    stale = home / f".config.json{safefs.TEMP_MARK}dead"
    fresh = home / f".config.json{safefs.TEMP_MARK}live"
    for path in (stale, fresh):
        path.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    replace(opened, "config.json", b"new")
    assert not stale.exists() and fresh.exists()
