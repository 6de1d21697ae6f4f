"""The installed `gaitstream` command runs each tool with its arguments and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from engines.gallery import GalleryStore

GAITSTREAM = Path(sys.executable).parent / "gaitstream"


def gaitstream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GAITSTREAM), *args], capture_output=True, text=True, timeout=120)


def test_commands_run_their_tool(tmp_path: Path):
    path = tmp_path / "g.sqlite"
    store = GalleryStore(path)
    store.add("bob", np.ones((2, 64), np.float32), encoder="e@1", parts=4)
    store.close()
    listed = gaitstream("gallery", "list", "--gallery", str(path))
    assert listed.returncode == 0 and "bob\t2 embeddings" in listed.stdout, listed.stderr
    missing = gaitstream("gallery", "delete", "nobody", "--gallery", str(path))
    assert missing.returncode == 2 and "no identity named 'nobody'" in missing.stderr
    helped = gaitstream("run", "--help")
    assert helped.returncode == 0 and "--rtsp" in helped.stdout


def test_usage_and_unknown_commands():
    assert "eval-wild" in gaitstream("--help").stdout
    unknown = gaitstream("frobnicate")
    assert unknown.returncode == 2 and "unknown command 'frobnicate'" in unknown.stderr
