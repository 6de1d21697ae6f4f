"""Shared fixtures: the real assets beside the project (`../shared`, or $GAITSTREAM_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_dir() -> Path:
    """`$GAITSTREAM_SHARED` or `../shared` next to the repository."""
    configured = os.environ.get("GAITSTREAM_SHARED")
    return Path(configured) if configured else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = find_shared_dir()
    if not (path / "assets").is_dir():
        pytest.fail(f"shared assets not found at {path}/assets: put the shared folder beside the project "
                    f"or set GAITSTREAM_SHARED", pytrace=False)
    return path


@pytest.fixture(scope="session")
def assets(shared_dir: Path) -> Path:
    return shared_dir / "assets"


@pytest.fixture(scope="session")
def videos(assets: Path) -> Path:
    return assets / "videos"


@pytest.fixture(scope="session")
def models(assets: Path) -> Path:
    return assets / "models"


@pytest.fixture(scope="session")
def outdoor_clip(videos: Path) -> Path:
    return videos / "aiog_outdoor_AB.mp4"


@pytest.fixture(scope="session")
def outdoor_frames(outdoor_clip: Path) -> list[np.ndarray]:
    """The first 8 frames of the outdoor clip (BGR, 1280x720 portrait)."""
    capture = cv2.VideoCapture(str(outdoor_clip))
    frames = []
    while len(frames) < 8:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames
