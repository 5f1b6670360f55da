"""The writer lock under a take-over race: two processes find the same dead holder at once."""
from __future__ import annotations

import json
import os
import socket

import pytest

import pipeline.core.lock as lock
from pipeline.core.lock import LockError, LockHolder, RootLock


def test_a_takeover_race_leaves_one_holder(tmp_path, monkeypatch):
    path = tmp_path / ".lock"
    dead = LockHolder(pid=999_999_999, host=socket.gethostname(), started="then", command="dead", process_start=None)
    path.write_text(json.dumps(lock.asdict(dead)))
    first, second = RootLock(path, "first", say=lambda _: None), RootLock(path, "second", say=lambda _: None)
    second.holder = LockHolder(os.getpid() + 1, first.holder.host, "now", "second", None)
    alive = lock._alive
    raced = []

    def first_takes_over_meanwhile(holder):
        # `second` has read the dead holder; before it moves that lock aside, `first` takes over and holds it
        if not raced:
            raced.append(True)
            first.acquire()
        return alive(holder)

    monkeypatch.setattr(lock, "_alive", first_takes_over_meanwhile)
    with pytest.raises(LockError, match="being written by"):
        second.acquire()
    assert first._held and not second._held
    assert json.loads(path.read_text())["command"] == "first"  # the live lock is back in place
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # nothing left aside
    first.release()
    assert not path.exists()
