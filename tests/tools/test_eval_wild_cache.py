"""tools/eval_wild.py's detection cache: keyed by what a clip holds and how it is detected, not where it lies."""

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from eval_wild import DetectionCache  # noqa: E402

from stages import load_pipeline_config  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "default.yaml"


def test_a_copied_clip_hits_the_cache_and_other_bytes_or_settings_miss(tmp_path: Path, outdoor_clip: Path) -> None:
    cache = DetectionCache(tmp_path / "cache", load_pipeline_config(DEFAULT))
    copy = tmp_path / "elsewhere" / outdoor_clip.name
    copy.parent.mkdir()
    shutil.copyfile(outdoor_clip, copy)
    os.utime(copy, (1, 1))  # a fresh checkout or a restored backup: other path, other time stamps
    assert cache.path(copy) == cache.path(outdoor_clip)
    with copy.open("r+b") as handle:  # one byte changed
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    assert cache.path(copy) != cache.path(outdoor_clip)
    other_detector = load_pipeline_config(DEFAULT, [(["stages", "detect_track", "detector", "conf"], 0.5)])
    assert DetectionCache(tmp_path / "cache", other_detector).path(outdoor_clip) != cache.path(outdoor_clip)
    assert DetectionCache(None, other_detector).path(outdoor_clip) is None
