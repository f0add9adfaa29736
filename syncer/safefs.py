"""Open, read and replace files without following links that someone else could have made.

A root-run syncer writes into directories other users own (``~/.docker``). Resolving such a
path by name lets the owner redirect the write, or a read, anywhere with a symlink (issue 16,
item 3). So every path is walked from ``/`` one component at a time with ``openat``
(``dir_fd``) and ``O_NOFOLLOW``. A symlink is followed only when it is *trusted*: it, and every
directory above it, could only have been made by root or by the syncer's own user (owned by
one of them, and not writable by group or others unless sticky, as ``/tmp`` is). So
``/home -> /var/home`` keeps working and a link in a user's home does not. The last component,
the file itself, is never followed. Files are opened ``O_NONBLOCK`` (a FIFO does not hang the
open), must be regular with one link (a hard link could name someone else's file), and are read
from the descriptor up to a cap (``/dev/zero`` cannot exhaust memory). Writes create a temporary
file with ``O_CREAT|O_EXCL|O_NOFOLLOW`` in the directory and rename it over the name in that same
directory; a rename replaces a symlink, it never writes through one.

No import from the rest of the package: vault or kube may use it for credential files too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable

FILE_MODE = 0o600
"""Mode of every file written: they hold credentials."""
MAX_HOPS = 40
"""Symlinks followed in one walk (the kernel's own limit), so a loop ends."""
TEMP_MARK = ".syncer-tmp-"
STALE_TEMP_AGE = 3600.0
"""Seconds after which a leftover temporary file (from a killed writer) is removed."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 65536


class UnsafeFileError(OSError):
    """A path the syncer refuses to use: an untrusted symlink, not a regular file, too large."""

    def __init__(self, name: str, reason: str, kind: str) -> None:
        super().__init__(errno.EPERM, f"{name} {reason}; refused", name)
        self.kind = kind
        """``symlink``, ``not_regular`` or ``too_large``."""


def _trusted_dir(st: os.stat_result) -> bool:
    """Only root or we can add, remove or rename entries here (sticky: only their owners can)."""
    writable_by_others = bool(st.st_mode & 0o022) and not st.st_mode & stat.S_ISVTX
    return st.st_uid in (0, os.geteuid()) and not writable_by_others


def _symlink_in(dir_fd: int, name: str) -> os.stat_result | None:
    """The lstat of ``name`` if it is a symlink, else None."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return st if stat.S_ISLNK(st.st_mode) else None


def _child(dir_fd: int, name: str, create: bool, trusted: bool) -> tuple[int, str | None]:
    """(fd of subdirectory ``name``, None), or (-1, link text) for a symlink we may follow."""
    try:
        return os.open(name, _DIR, dir_fd=dir_fd), None
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        return _child(dir_fd, name, False, trusted)
    except OSError as exc:
        link = _symlink_in(dir_fd, name) if exc.errno in (errno.ELOOP, errno.ENOTDIR) else None
        if link is None:
            raise
        if not (trusted and link.st_uid in (0, os.geteuid())):
            raise UnsafeFileError(name, "is a symbolic link another user could have made",
                                  "symlink") from None
        return -1, os.readlink(name, dir_fd=dir_fd)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def _root() -> tuple[int, bool]:
    fd = os.open("/", _DIR)
    return fd, _trusted_dir(os.fstat(fd))


def open_dir(path: str, create: bool = False) -> int:
    """A descriptor of directory ``path`` (made 0700 where missing if ``create``), walked from
    ``/`` without following untrusted symlinks. Raises OSError (UnsafeFileError for a link)."""
    pending, hops = _parts(os.path.abspath(path)), 0
    walked: list[str] = []
    fd, trusted = _root()
    try:
        while pending:
            name = pending.pop(0)
            if name == "..":  # back up by name and re-walk from /, so trust is decided anew
                pending = walked[:-1] + pending
            else:
                child, target = _child(fd, name, create, trusted)
                if target is None:
                    os.close(fd)
                    fd = child
                    trusted = trusted and _trusted_dir(os.fstat(fd))
                    walked.append(name)
                    continue
                hops += 1
                if hops > MAX_HOPS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                pending = _parts(target) + pending
                if not target.startswith("/"):
                    continue
            old, fd, walked = fd, -1, []
            os.close(old)
            fd, trusted = _root()
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _describe(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


def _checked(fd: int, name: str, limit: int) -> os.stat_result:
    """The fstat of an open file that is regular, has one link and is at most ``limit`` bytes."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(name, f"is {_describe(st.st_mode)}, not a regular file", "not_regular")
    if st.st_nlink != 1:
        raise UnsafeFileError(name, f"has {st.st_nlink} hard links (it may be another user's file)",
                              "not_regular")
    if st.st_size > limit:
        raise UnsafeFileError(name, f"is larger than {limit} bytes", "too_large")
    return st


def read_regular(dir_fd: int, name: str, limit: int) -> tuple[os.stat_result, bytes] | None:
    """(fstat, content) of regular file ``name`` in ``dir_fd``, or None when it does not exist.
    Never follows a symlink; reads at most ``limit`` bytes. Raises OSError."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(name, "is a symbolic link", "symlink") from None
        if exc.errno == errno.ENXIO:  # a socket (or a device without a driver) cannot be opened
            raise UnsafeFileError(name, "is not a regular file", "not_regular") from None
        raise
    try:
        st = _checked(fd, name, limit)
        chunks, size = [], 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew since the fstat
                raise UnsafeFileError(name, f"is larger than {limit} bytes", "too_large")
        return st, b"".join(chunks)
    finally:
        os.close(fd)


def replace(dir_fd: int, name: str, content: bytes, owner: tuple[int, int] = (-1, -1),
            before_rename: Callable[[], None] | None = None) -> None:
    """Atomically replace ``name`` in ``dir_fd`` with ``content``: a new temporary file
    (``O_EXCL|O_NOFOLLOW``), mode 0600, ``owner`` kept, fsync, rename, fsync of the directory."""
    remove_stale_temps(dir_fd, name)
    tmp = f".{name}{TEMP_MARK}{secrets.token_hex(6)}"
    fd = os.open(tmp, _CREATE, FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it; never wider
            if owner != (-1, -1):
                os.fchown(fd, *owner)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()  # the last precondition check, right before the atomic replace
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def remove_stale_temps(dir_fd: int, name: str) -> None:
    """Remove temporary files a killed writer left behind (old enough not to be in use)."""
    prefix = f".{name}{TEMP_MARK}"
    with contextlib.suppress(OSError), os.scandir(dir_fd) as entries:
        for entry in entries:
            if (entry.name.startswith(prefix)
                    and time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE):
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=dir_fd)
