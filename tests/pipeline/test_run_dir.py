"""A run's ipc sockets must fit ZeroMQ's path limit wherever $TMPDIR points, and a failed bind must not hang."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zmq

from pipeline.errors import TransportError
from pipeline.supervisor import make_run_dir
from pipeline.transport import ControlServer, ipc_folder_fits


def deep_folder(tmp_path: Path) -> Path:
    folder = tmp_path / ("d" * 60) / ("e" * 40)
    folder.mkdir(parents=True)
    return folder


def test_a_deep_tmpdir_gets_a_run_folder_the_sockets_fit_and_is_left_empty(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    deep = deep_folder(tmp_path)
    assert not ipc_folder_fits(deep)
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read $TMPDIR
    folder = make_run_dir()
    try:
        assert ipc_folder_fits(folder) and folder.is_dir()
        assert list(deep.iterdir()) == []
    finally:
        folder.rmdir()


def test_a_failed_bind_says_why_and_leaves_the_context_free_to_close(tmp_path: Path):
    """Before: the socket of a failed bind stayed open and `Context.term` blocked for ever (a run hung silently
    instead of reporting its start-up error)."""
    context = zmq.Context()
    with pytest.raises(TransportError, match="cannot bind"):
        ControlServer(context, f"ipc://{deep_folder(tmp_path)}/{'x' * 40}.sock")
    closer = threading.Thread(target=context.term, daemon=True)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive(), "Context.term blocked on the failed socket"
