"""One writer per dataset root: ``ROOT/.lock`` names the command that is writing (pid, host, start time, argv).

Taken with an exclusive create, so two commands can never both hold it. A second writer is refused with the
holder's details. A lock whose process is gone (same host: no such pid, or the pid now belongs to a process that
started later) is taken over, with a message; a lock from another host cannot be checked from here and is refused
with the command that removes it. The lock is released when the command ends, however it ends short of a kill; a
killed command leaves a lock that the next command takes over.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.core.atomic import unique_tmp_name


class LockError(RuntimeError):
    """Another command holds the root's writer lock."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started: str                          # ISO 8601, UTC
    command: str
    process_start: int | None = None      # the process's start time in clock ticks since boot (Linux), against pid reuse

    @classmethod
    def this_process(cls, command: str) -> "LockHolder":
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), now, command, _process_start(os.getpid()))

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started}: {self.command}"


def _process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(holder: LockHolder) -> bool:
    """Whether the holder (on this host) still runs: the pid exists and, where Linux tells, started when it did."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by another user
        pass
    if holder.process_start is not None:
        now = _process_start(holder.pid)
        if now is not None and now != holder.process_start:
            return False         # the pid was reused by a younger process
    return True


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file; None when the file is gone or unreadable (a half-written lock)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(**{k: data.get(k) for k in LockHolder.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


class RootLock:
    """``with RootLock(root / ".lock", command):`` holds the lock for the block (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, command: str, *, say: Callable[[str], Any] | None = None):
        self.path = Path(path)
        self.holder = LockHolder.this_process(command)
        self.say = say or (lambda text: print(text, file=sys.stderr))
        self._held = False

    def acquire(self) -> None:
        payload = json.dumps(asdict(self.holder), sort_keys=True, indent=2) + "\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_dead()      # raises LockError while a live holder has it
                continue
            except OSError as exc:             # a read-only root, a full disk: the command cannot write here
                raise type(exc)(exc.errno, f"cannot write in the dataset root ({exc.strerror})",
                                str(self.path.parent)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
            self._held = True
            return
        raise LockError(f"{self.path}: could not take the writer lock (it keeps changing hands); try again")

    def _take_over_if_dead(self) -> None:
        """Remove a lock whose holder is dead (saying so); raise LockError when a live or foreign holder has it."""
        holder = read_holder(self.path)
        if holder is None:
            # Just created by another process that has not written it yet, or damaged: look again shortly.
            time.sleep(0.2)
            holder = read_holder(self.path)
            if holder is None:
                if not self.path.exists():
                    return
                raise LockError(f"{self.path}: an unreadable writer lock is in the way; if no vlm3r-data command "
                                f"is writing this root, delete it (rm {self.path})")
        if holder.host != socket.gethostname():
            raise LockError(f"{self.path}: the root is being written by {holder.describe()}; wait for it to finish, "
                            f"or if that command is dead, delete the lock (rm {self.path})")
        if _alive(holder):
            raise LockError(f"{self.path}: the root is being written by {holder.describe()}; one writer per root: "
                            f"wait for it to finish")
        # Move the dead holder's lock aside under a unique name, then look at what was moved: a process taking over
        # at the same time may already have removed the dead lock and created its own, and a live lock moved aside
        # by mistake goes straight back (os.link never replaces a file). The exclusive create decides who holds it.
        aside = self.path.with_name(unique_tmp_name(self.path.name))
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if read_holder(aside) != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self.say(f"note: taking over the writer lock of a dead process ({holder.describe()})")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        holder = read_holder(self.path)
        if holder is not None and holder.pid == self.holder.pid and holder.host == self.holder.host:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RootLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
