"""One writer per output: ``fit``, ``predict``, ``tune`` and ``benchmark`` hold a lock on what
they write, so that a second process is refused, told who holds it, instead of both saying
"saved" while one result is lost.

The lock is an ``flock`` on a small file (``.lock`` in an output folder, ``.<name>.lock`` beside
an output file) that also records who holds it. The kernel releases an ``flock`` when its process
dies, so a lock left by a killed process is simply taken over (with a note); the record is what
lets the refusal name the holder. A record left by a process on another host is not taken over:
``flock`` may not reach across hosts on a network file system, so that process may still run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from mtpert.errors import ConfigError
from mtpert.io import disk_full_errors

log = logging.getLogger("mtpert")

LOCK_NAME = ".lock"
"""The lock file of an output folder."""

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class OutputInUseError(ConfigError):
    """Another process is writing to the same output."""


def this_host() -> str:
    """The name of this machine, as recorded in locks and running tuning trials."""
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (one of another user counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def output_lock(out: str | os.PathLike[str], *, file: bool = False) -> Iterator[None]:
    """Hold output ``out`` (a folder, created if missing; with ``file``, a file) for this
    process until the block ends.

    A folder created here that is still empty at the end (the work failed before writing
    anything) is removed again, so a failed command leaves no empty output folder behind.

    Raises:
        OutputInUseError: another process holds ``out``; the message names its PID and host.
        ConfigError: ``out`` is a dangling symbolic link, a file where a folder is wanted, or
            cannot be written.
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ConfigError(
            f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; "
            "create its target (or mount its disk), or remove the link, or give another --out."
        )
    if not file and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder; give a folder.")
    lock = out.with_name(f".{out.name}.lock") if file else out / LOCK_NAME
    created = False
    try:
        with _writable(out), disk_full_errors(out):
            if file:
                out.parent.mkdir(parents=True, exist_ok=True)
            else:
                with suppress(FileExistsError):
                    out.mkdir(parents=True)
                    created = True
            fd = _acquire(lock, out)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # before closing: whoever opens it next makes a new one
            os.close(fd)
    finally:
        if created:
            with suppress(OSError):  # not empty: the work wrote something, which stays
                out.rmdir()


@contextmanager
def _writable(out: Path) -> Iterator[None]:
    """Turn a write refused in the block (no permission, a read-only file system) into a
    :class:`ConfigError` naming ``out`` and the fix."""
    try:
        yield
    except OSError as error:
        if error.errno not in _NOT_WRITABLE:
            raise
        raise ConfigError(
            f"Cannot write to --out {out} (read-only); give a path you can write to."
        ) from None


def _acquire(lock: Path, out: Path) -> int:
    """An open descriptor of ``lock``, flocked by this process, holding this process's record."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _record(fd)
            os.close(fd)
            raise OutputInUseError(
                f"{out} is in use by {_holder(holder)}; wait for it or choose another --out."
            ) from None
        with suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # its holder removed that file as it finished: lock the one there now
    left = _record(fd)
    if left and left.get("host") != this_host():
        os.close(fd)
        raise OutputInUseError(
            f"{out} is in use by {_holder(left)}, or was until it ended without releasing it; another host's "
            f"process cannot be checked from here. Wait for it, or remove {lock} if it has ended, or choose another --out."
        )
    if left:
        log.warning(
            "%s was left locked by %s, which ended without releasing it; taking it over",
            out,
            _holder(left),
        )
    record = {
        "pid": os.getpid(),
        "host": this_host(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except BaseException:  # a full disk: give the lock up as it was never taken
        lock.unlink(missing_ok=True)
        os.close(fd)
        raise
    return fd


def _record(fd: int) -> dict[str, object]:
    """The holder's record in an open lock file; empty if there is none (or it is unreadable)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder(record: dict[str, object]) -> str:
    if not record:
        return "another process"
    return f"PID {record.get('pid')} on {record.get('host')} (started {record.get('started')})"
