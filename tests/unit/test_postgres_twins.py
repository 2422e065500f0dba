"""The /tmp twins of throwaway stacks' PostgreSQL clusters go when their state dir has gone
(pipeline.app.servers.postgres): only those, never one whose server runs or whose owner is
unknown."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.app.servers.postgres import TWIN_PREFIX, discard, remove_orphans, twin_dir


def twin(root: Path, name: str, owner: Path | None, *, pid: int | None = None) -> Path:
    path = root / f"{TWIN_PREFIX}{name}"
    (path / "base").mkdir(parents=True)
    (path / "PG_VERSION").write_text("15\n")
    if owner is not None:
        (root / f"{path.name}.owner").write_text(str(owner))
    if pid is not None:
        (path / "postmaster.pid").write_text(f"{pid}\n/some/datadir\n")
    return path


def test_only_twins_of_vanished_state_dirs_with_no_server_running_are_removed(tmp_path: Path) -> None:
    tmp_root, states = tmp_path / "tmp", tmp_path / "states"
    tmp_root.mkdir()
    (states / "kept").mkdir(parents=True)
    orphan = twin(tmp_root, "aaaa", states / "gone")
    stale_pid = twin(tmp_root, "bbbb", states / "gone-too", pid=2**22 + 12345)  # no such process
    live = twin(tmp_root, "cccc", states / "gone-but-running", pid=os.getpid())
    owned = twin(tmp_root, "dddd", states / "kept")
    legacy = twin(tmp_root, "eeee", None)
    other = tmp_root / "unrelated"
    other.mkdir()

    removed = remove_orphans(tmp_root)

    assert sorted(removed) == sorted([orphan, stale_pid])
    assert not orphan.exists() and not (tmp_root / f"{orphan.name}.owner").exists()
    assert not stale_pid.exists()
    assert live.exists() and owned.exists() and legacy.exists() and other.exists()
    assert (tmp_root / f"{owned.name}.owner").exists()
    assert remove_orphans(tmp_root) == []  # nothing more to do


def test_discard_removes_the_twin_of_that_state_dir_only(tmp_path: Path) -> None:
    tmp_root, state = tmp_path / "tmp", tmp_path / "state"
    tmp_root.mkdir()
    state.mkdir()
    mine = twin_dir((state / "postgres").resolve(), tmp_root)
    (mine / "base").mkdir(parents=True)
    (tmp_root / f"{mine.name}.owner").write_text(str(state))
    theirs = twin(tmp_root, "ffff", tmp_path / "other")

    assert discard(state, tmp_root)
    assert not mine.exists() and not (tmp_root / f"{mine.name}.owner").exists()
    assert theirs.exists()
    assert not discard(state, tmp_root)  # already gone
