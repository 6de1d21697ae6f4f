"""tools/enroll.py checks the gallery and the name before it reads a single frame: a live walk is not repeated.

The source is an RTSP address nobody serves: had the tool opened it first, the error would be about the stream.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.gallery import GalleryStore
from tests.conftest import REPO_ROOT


def enroll(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "enroll.py"), "--quiet",
                           "--source", "rtsp://127.0.0.1:9/nobody", "--max-seconds", "5", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def other_encoders_gallery(tmp_path: Path) -> Path:
    path = tmp_path / "other.sqlite"
    store = GalleryStore(path)
    store.add("bob", np.ones((2, 2048), np.float32), encoder="another-encoder@12345678", parts=16)
    store.close()
    return path


@pytest.mark.parametrize(("case", "expected"), [
    ("corrupt", "file is not a database"),
    ("blank name", "must not be empty"),
    ("other encoder", "holds embeddings of encoder another-encoder@12345678"),
])
def test_refusals_come_before_the_source_is_opened(case: str, expected: str, tmp_path: Path,
                                                    other_encoders_gallery: Path):
    gallery, name = tmp_path / "gallery.sqlite", "alice"
    if case == "corrupt":
        gallery.write_text("not a database\n" * 100)
    elif case == "blank name":
        name = "  "
    else:
        gallery = other_encoders_gallery
    done = enroll("--name", name, "--gallery", str(gallery))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr[-2000:]
    assert "rtsp" not in errors[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["--name", "a", "--name", "b"], "2 --name and 0 --track-id"),
    (["--name", "a", "--track-id", "1", "--name", "b"], "2 --name and 1 --track-id"),
    (["--name", "a", "--track-id", "1", "--name", "a", "--track-id", "2"], "name given twice: a"),
    (["--name", "a", "--track-id", "3", "--name", "b", "--track-id", "3"], "track id given twice: 3"),
])
def test_several_people_need_one_distinct_track_each(args: list[str], expected: str, tmp_path: Path):
    done = enroll(*args, "--gallery", str(tmp_path / "gallery.sqlite"))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "gallery.sqlite").exists()
