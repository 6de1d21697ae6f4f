"""Bad input gives one clear `error:` line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, run_pipeline

pytestmark = pytest.mark.slow


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_clear_error(done, *expected: str) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_missing_file(tmp_path: Path):
    missing = tmp_path / "no_such_clip.mp4"
    assert_one_clear_error(run_pipeline("--source", str(missing), "--no-display", timeout_s=120), str(missing))


def test_file_that_is_not_a_video(tmp_path: Path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 100)
    assert_one_clear_error(run_pipeline("--source", str(fake), "--no-display", timeout_s=120), str(fake))


def test_corrupt_file_in_a_folder_is_skipped_and_the_rest_processed(tmp_path: Path, videos: Path):
    folder = tmp_path / "footage"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes((videos / "aiog_indoor_C_short.mp4").read_bytes()[:2000])
    (folder / "good.mp4").symlink_to(videos / "aiog_indoor_C_short.mp4")
    out = tmp_path / "out"
    done = run_pipeline("--source", str(folder), "--out", str(out), "--no-display", timeout_s=300)
    assert done.returncode == 1, done.stderr[-3000:]  # something was skipped, the rest was done
    assert "Traceback" not in done.stderr
    assert "broken.mp4" in done.stderr and "good: 42 frames, ok" in done.stderr, done.stderr[-3000:]
    assert (out / "good" / "annotated.mp4").is_file()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stages: [unclosed\n", "not valid YAML"),
        ("stages:\n  gait:\n    window_frames: -3\n", "stages.gait.window_frames"),
        ("stages:\n  detect_track:\n    no_such_key: 1\n", "stages.detect_track.no_such_key"),
    ],
    ids=["yaml-syntax", "bad-value", "unknown-key"],
)
def test_malformed_config(tmp_path: Path, videos: Path, text: str, expected: str):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    done = run_pipeline("--config", str(config), "--source", str(videos / "aiog_indoor_C_short.mp4"),
                        "--no-display", timeout_s=120)
    line = assert_one_clear_error(done, expected)
    assert "broken.yaml" in line


def test_unreachable_rtsp_url():
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    done = run_pipeline("--rtsp", url, "--no-display", "--set", "stages.source.connect_timeout_s=2",
                        "--set", "stages.source.initial_connect_attempts=2", timeout_s=180)
    assert_one_clear_error(done, url)


@pytest.mark.parametrize("stage", ["bogus", "detect-track"])
def test_an_unknown_stage_for_only_is_one_error(videos: Path, stage: str):
    done = run_pipeline("--source", str(videos / "aiog_indoor_C_short.mp4"), "--no-display", "--only", stage,
                        timeout_s=60)
    line = assert_one_clear_error(done, "--only", stage)
    if stage == "detect-track":
        assert "detect_track" in line


def test_a_metrics_port_in_use_is_one_error_and_leaves_nothing_behind(videos: Path, tmp_path: Path):
    import socket

    runs = tmp_path / "tmp"
    runs.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_pipeline("--source", str(videos / "aiog_indoor_C_short.mp4"), "--no-display", "--metrics-port",
                            str(port), timeout_s=120, env={"TMPDIR": str(runs)})
    assert_one_clear_error(done, "--metrics-port", str(port))
    assert list(runs.iterdir()) == []


def test_a_truncated_file_is_reported_with_what_was_read_and_counted(tmp_path: Path, videos: Path):
    folder = tmp_path / "footage"
    folder.mkdir()
    (folder / "cut.mp4").write_bytes((videos / "aiog_indoor_C_short.mp4").read_bytes()[:100_000])
    (folder / "good.mp4").symlink_to(videos / "aiog_indoor_C_short.mp4")
    done = run_pipeline("--source", str(folder), "--out", str(tmp_path / "out"), "--no-display", timeout_s=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "good: 42 frames, ok" in done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("cut:"))
    assert "truncated" in line and "18 of the 83 frames" in line, line


def test_a_stage_that_cannot_open_is_said_once_and_nothing_else_is_blamed(tmp_path: Path, videos: Path):
    out = tmp_path / "not" / "made" / "yet"
    done = run_pipeline("--source", str(videos / "aiog_indoor_C_short.mp4"), "--no-display", "--out", str(out),
                        "--set", "stages.gait.encoder=/nonexistent.pt", timeout_s=180)
    line = assert_one_clear_error(done, "gait", "/nonexistent.pt")
    assert done.stderr.count("no such encoder file") == 1, done.stderr
    assert "summary.json" not in line and (out / "summary.json").is_file()


def test_a_camera_on_its_side_gets_a_hint_to_rotate(videos: Path):
    done = run_pipeline("--source", str(videos / "aiog_rotated_sideways.mp4"), "--no-display", timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hint = next(line for line in done.stderr.splitlines() if line.startswith("hint:"))
    assert "--rotate" in hint
    rotated = run_pipeline("--source", str(videos / "aiog_rotated_sideways.mp4"), "--no-display", "--rotate", "cw90",
                           timeout_s=300)
    assert rotated.returncode == 0 and "hint:" not in rotated.stderr, rotated.stderr[-3000:]
