"""Who is who, end to end: enrol the two walkers of the outdoor clip as A and B with tools/enroll.py, then the
pipeline names each track on that clip and calls the lobby's person C, who is not enrolled, unknown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import read_events, run_pipeline

pytestmark = pytest.mark.slow


def enroll(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "enroll.py"), "--quiet", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def final_identities(events_file: Path) -> dict[int, str]:
    """Each track's last decided identity."""
    return {e["track_id"]: e["identity"] for e in read_events(events_file) if e["type"] == "identity"}


@pytest.fixture(scope="module")
def enrolled(outdoor_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """The gallery, and which track of the outdoor clip was enrolled under which name."""
    path = tmp_path_factory.mktemp("gallery") / "gallery.sqlite"
    listed = enroll("--source", str(outdoor_clip), "--list-tracks")
    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = [tuple(int(v) for v in line.split()) for line in listed.stdout.splitlines()]
    assert rows == sorted(rows, key=lambda row: row[1]), "tracks must be listed in order of first appearance"
    walkers = [row for row in rows if row[3] >= 20]  # at the default 15 fps, about 30 silhouettes per walk
    assert len(walkers) == 2, listed.stdout
    pairs = [arg for name, (track, *_) in zip("AB", walkers) for arg in ("--name", name, "--track-id", str(track))]
    done = enroll("--source", str(outdoor_clip), *pairs, "--gallery", str(path))  # both from one pass
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["enrolled A", "enrolled B"], done.stdout
    return path, {track_id: name for name, (track_id, *_) in zip("AB", walkers)}


def test_enrolled_walkers_are_named(enrolled: tuple[Path, dict[int, str]], outdoor_clip: Path, tmp_path: Path):
    gallery, names = enrolled
    done = run_pipeline("--source", str(outdoor_clip), "--out", str(tmp_path), "--no-display", "--gallery",
                        str(gallery))
    assert done.returncode == 0, done.stderr[-3000:]
    named = final_identities(tmp_path / outdoor_clip.stem / "events.jsonl")
    assert {track: named.get(track) for track in names} == names, named
    identity = next(e for e in read_events(tmp_path / outdoor_clip.stem / "events.jsonl") if e["type"] == "identity")
    assert {"identity", "score", "candidates", "track_id", "bbox"} <= identity.keys()
    assert identity["candidates"] and {"name", "distance"} <= identity["candidates"][0].keys()


@pytest.mark.parametrize("clip", ["aiog_indoor_C.mp4", "aiog_indoor_C_short.mp4"])
def test_someone_not_enrolled_is_unknown(enrolled: tuple[Path, dict[int, str]], videos: Path, tmp_path: Path,
                                         clip: str):
    gallery, _ = enrolled
    done = run_pipeline("--source", str(videos / clip), "--out", str(tmp_path), "--no-display", "--gallery",
                        str(gallery))
    assert done.returncode == 0, done.stderr[-3000:]
    named = final_identities(tmp_path / Path(clip).stem / "events.jsonl")
    assert named, "person C got no identity decision"
    assert set(named.values()) == {"unknown"}, named


def test_walkers_seen_walking_the_other_way_are_named(enrolled: tuple[Path, dict[int, str]], outdoor_clip: Path,
                                                      tmp_path: Path):
    """A mirrored copy of the enrolment clip: A and B cross the image the other way, and are still named."""
    mirrored = tmp_path / "outdoor_mirrored.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(outdoor_clip), "-vf", "hflip", "-c:v", "libx264", "-crf", "16",
                    "-an", str(mirrored)], check=True, timeout=120)
    gallery, names = enrolled
    done = run_pipeline("--source", str(mirrored), "--out", str(tmp_path / "out"), "--no-display", "--gallery",
                        str(gallery))
    assert done.returncode == 0, done.stderr[-3000:]
    events = read_events(tmp_path / "out" / mirrored.stem / "events.jsonl")
    first_seen: dict[int, int] = {}
    for event in events:
        first_seen.setdefault(event["track_id"], event["frame"])
    named = final_identities(tmp_path / "out" / mirrored.stem / "events.jsonl")
    walkers = sorted(named, key=first_seen.__getitem__)
    assert [named[t] for t in walkers if named[t] != "unknown"] == ["A", "B"], (named, first_seen)
