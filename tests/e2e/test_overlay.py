"""The live overlay window, shown on a virtual X display (Xvfb) and captured as a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stages.overlay import track_colour
from tests.conftest import REPO_ROOT, wait_for
from tests.e2e.conftest import pipeline_command

pytestmark = pytest.mark.slow


def window_ids(display: str, title: str) -> list[str]:
    found = subprocess.run(["xdotool", "search", "--name", title], capture_output=True, text=True,
                           env={**os.environ, "DISPLAY": display})
    return found.stdout.split()


def test_overlay_window_shows_tracks(xvfb_display: str, outdoor_clip: Path, tmp_path: Path):
    for tool in ("xdotool", "import"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install xdotool imagemagick (.ci/run does this)", pytrace=False)
    env = {**os.environ, "DISPLAY": xvfb_display}
    env.pop("QT_QPA_PLATFORM", None)
    # Played at its native rate (live mode) so the window stays up while people walk through.
    log_path = tmp_path / "pipeline.log"
    with log_path.open("w") as log:
        run = subprocess.Popen(pipeline_command("--source", str(outdoor_clip), "--set", "stages.source.mode=live"),
                               cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    shots = []
    try:
        window = wait_for(lambda: window_ids(xvfb_display, "gaitstream"), 120, "the overlay window")[0]
        while run.poll() is None and len(shots) < 8:  # shots spread over the walk; some show tracked people
            shot = tmp_path / f"overlay-{len(shots)}.png"
            try:  # the window closes when the clip ends; a capture racing that fails or hangs
                taken = subprocess.run(["import", "-window", window, str(shot)], env=env, capture_output=True,
                                       timeout=10)
            except subprocess.TimeoutExpired:
                break
            if taken.returncode != 0:
                break
            shots.append(cv2.imread(str(shot)))
            time.sleep(0.7)
    finally:
        run.terminate()
        run.wait(60)
    assert run.returncode == 0, log_path.read_text()[-3000:]
    images = [image for image in shots if image is not None]
    assert images, "no screenshot could be read"
    assert all(image.shape[0] >= 100 and image.std() > 10 for image in images), "a blank window"
    # Track boxes are drawn in each track's colour (the window is scaled, so match within a small tolerance).
    colours = np.array([track_colour(track_id) for track_id in range(1, 10)])
    drawn = [max(float((np.abs(image.astype(int) - colour).max(-1) <= 12).mean()) for colour in colours)
             for image in images]
    assert max(drawn) > 0.001, f"no track box visible (fractions of box-coloured pixels {drawn})"
    cv2.imwrite(str(tmp_path / "overlay.png"), images[int(np.argmax(drawn))])
