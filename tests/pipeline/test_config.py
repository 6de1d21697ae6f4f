"""Config files: validation errors name file and key; `extends` merges section by section; the shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, build_config_model, load_config, parse_override
from stages import DEFAULT_GRAPH, stage_registry
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def model():
    return build_config_model({name: cls.Config for name, cls in stage_registry().items()}, DEFAULT_GRAPH)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "configs" / "pipeline").glob("*.yaml")))
def test_shipped_configs_validate(model, name: str):
    config = load_config(model, REPO_ROOT / "configs" / "pipeline" / name)
    assert config.graph == list(DEFAULT_GRAPH)


def test_extends_merges_sections_and_replaces_lists(model, tmp_path: Path):
    (tmp_path / "base.yaml").write_text("stages:\n  gait:\n    window_frames: 40\n    stride_frames: 10\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\nstages:\n  gait:\n    stride_frames: 20\n"
                                       "streams:\n  - uri: rtsp://cam/1\n    id: door\n")
    config = load_config(model, tmp_path / "top.yaml")
    assert (config.stages.gait.window_frames, config.stages.gait.stride_frames) == (40, 20)
    assert [s.id for s in config.streams] == ["door"]


def test_extends_loop_and_missing_parent_are_errors(model, tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(model, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: ../elsewhere.yaml\n")
    with pytest.raises(ConfigError, match="elsewhere.yaml: config file not found"):
        load_config(model, tmp_path / "c.yaml")


def test_a_site_config_anywhere_extends_the_shipped_one_and_its_paths_keep_their_meaning(model, tmp_path: Path):
    shipped = REPO_ROOT / "configs" / "pipeline" / "default.yaml"
    site = tmp_path / "site" / "cameras.yaml"
    site.parent.mkdir()
    site.write_text(f"extends: {shipped}\nstages:\n  match:\n    gallery: people.sqlite\n")
    config = load_config(model, site)
    reference = load_config(model, shipped)
    encoder = REPO_ROOT / "weights" / "gaitbase_wild_synthetic_compact_casiab.pt"
    assert config.stages.gait.encoder.resolve() == reference.stages.gait.encoder.resolve() == encoder.resolve()
    assert [Path(w).resolve() for w in config.stages.detect_track.detector.weights] == \
        [Path(w).resolve() for w in reference.stages.detect_track.detector.weights]
    assert config.stages.match.gallery == site.parent / "people.sqlite"  # the site file's own relative path
    chained = tmp_path / "site" / "door.yaml"  # a chain: door.yaml -> cameras.yaml -> the shipped default
    chained.write_text("extends: cameras.yaml\n")
    assert load_config(model, chained).stages.gait.encoder.resolve() == encoder.resolve()


def test_errors_name_the_file_and_the_key(model, tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  match:\n    top_k: zero\n")
    with pytest.raises(ConfigError) as error:
        load_config(model, path)
    assert str(path) in str(error.value) and "stages.match.top_k" in str(error.value)


def test_a_bad_command_line_value_names_set_not_the_file(model, tmp_path: Path):
    path = tmp_path / "ok.yaml"
    path.write_text("stages:\n  match:\n    top_k: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(model, path, [parse_override("stages.match.top_k=abc")])
    assert str(error.value).startswith("--set stages.match.top_k: ") and str(path) not in str(error.value)


def test_files_played_as_cameras_get_a_source_process_each(videos: Path):
    """multi_camera.yaml with files instead of URLs: `mode: live` means one process per camera, as with cameras."""
    import shutil

    from pipeline.supervisor import Supervisor
    from stages import load_pipeline_config

    clips = [str(videos / "aiog_lobby_C.mp4"), str(videos / "aiog_indoor_C_short.mp4")]
    for mode, sources in (("live", 2), ("batch", 1)):
        config = load_pipeline_config(REPO_ROOT / "configs" / "pipeline" / "multi_camera.yaml", [
            (["streams"], [{"uri": clip} for clip in clips]), (["stages", "source", "mode"], mode)])
        supervisor = Supervisor(config, stage_registry())
        try:
            supervisor._build()
            lanes = [m.spec.inputs for m in supervisor.processes.values() if m.is_source]
        finally:
            shutil.rmtree(supervisor.run_dir, ignore_errors=True)
        assert len(lanes) == sources, (mode, lanes)


@pytest.mark.parametrize(("key", "replacement"), [
    ("stages.detect_track.detector.threads", "stages.detect_track.threads"),
    ("stages.segment.segmenter.threads", "stages.segment.threads"),
    ("stages.detect_track.track_end_after_s", "stages.detect_track.track_lifetime_s"),
    ("stages.detect_track.detector.max_lost_frames", "stages.detect_track.track_lifetime_s"),
])
def test_a_removed_key_names_its_replacement(model, tmp_path: Path, key: str, replacement: str):
    """Keys that validated and did nothing (the engines' `threads`, overwritten by the stage's) or that split one
    concept (track lifetime in frames and in seconds) are gone, and an old config is told what to write instead."""
    *sections, leaf = key.split(".")
    path = tmp_path / "old.yaml"
    path.write_text("".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(sections)) + f"{'  ' * len(sections)}"
                    f"{leaf}: 4\n")
    for overrides, where in (([], f"{path}: {key}"), ([parse_override(f"{key}=4")], f"--set {key}")):
        with pytest.raises(ConfigError) as error:
            load_config(model, path if not overrides else None, overrides)
        message = str(error.value)
        assert message.startswith(f"{where}: no longer a setting") and replacement in message, message


def test_a_timeout_for_orphaned_tracks_must_outlast_the_track_lifetime(tmp_path: Path):
    """The wall-clock timeouts forget tracks whose end was lost; shorter than the lifetime they would forget walkers
    that detect_track still follows."""
    from stages import load_pipeline_config

    path = tmp_path / "site.yaml"
    path.write_text("stages:\n  detect_track:\n    track_lifetime_s: 2.0\n"
                    "  match:\n    orphaned_track_timeout_s: 2.0\n")
    with pytest.raises(ConfigError) as error:
        load_pipeline_config(path)
    assert str(error.value) == ("stages.match.orphaned_track_timeout_s (2 s) must be longer than "
                                "stages.detect_track.track_lifetime_s (2 s): it only forgets tracks whose end was lost")
    assert load_pipeline_config(path, [parse_override("stages.match.orphaned_track_timeout_s=2.5")])


@pytest.mark.parametrize("stage", ["gait", "match", "sink"])
def test_the_old_track_timeout_names_its_replacement(model, stage: str):
    with pytest.raises(ConfigError) as error:
        load_config(model, None, [parse_override(f"stages.{stage}.track_timeout_s=5")])
    assert f"stages.{stage}.orphaned_track_timeout_s" in str(error.value)
