"""A leased camera's read deadline: written by the node, obeyed by the source, read from disk only when needed."""

from __future__ import annotations

from pathlib import Path

from pipeline.fence import ReadDeadline, deadline_path, extend_deadline


def test_a_deadline_is_obeyed_and_reread_only_once_it_has_passed(tmp_path: Path):
    path = deadline_path(tmp_path, "door 1")
    deadline = ReadDeadline(path)
    assert deadline.passed(0.0)  # nothing written: no lease yet
    extend_deadline(path, 10.0)
    assert not deadline.passed(5.0)
    path.unlink()  # not looked at again while the deadline read last still lies ahead
    assert not deadline.passed(9.9)
    assert deadline.passed(10.0)
    extend_deadline(path, 20.0)  # a renewal the node wrote meanwhile
    assert not deadline.passed(15.0)
    assert deadline.passed(20.0)
