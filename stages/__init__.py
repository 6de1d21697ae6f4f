"""The stages of the gaitstream pipeline, one module each, and the table the supervisor starts them from.

Stage modules are imported only by `stage_registry()`, so a stage process imports its own module and nothing
else (a source process never loads torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, build_config_model, load_config
from pipeline.stage import Stage

_STAGE_CLASSES = {
    "source": "stages.source:VideoSourceStage",
    "detect_track": "stages.detect_track:DetectTrackStage",
    "segment": "stages.segment:SegmentStage",
    "gait": "stages.gait:GaitStage",
    "match": "stages.match:MatchStage",
    "sink": "stages.sinks:SinkStage",
}
DEFAULT_GRAPH = ("detect_track", "segment", "gait", "match", "sink")


def stage_registry() -> dict[str, type[Stage]]:
    """Stage name -> class, for the supervisor and the config model."""
    registry = {}
    for name, target in _STAGE_CLASSES.items():
        module, _, cls = target.partition(":")
        registry[name] = getattr(import_module(module), cls)
    return registry


def load_pipeline_config(path: Path, overrides: Sequence[tuple[list[str], Any]] = ()) -> Any:
    """The validated pipeline config of `path` with `overrides`, every stream given its id (file stem, host)."""
    from stages.source import stream_id_for

    model = build_config_model({name: cls.Config for name, cls in stage_registry().items()}, DEFAULT_GRAPH)
    config = load_config(model, path, overrides)
    check_track_timeouts(config.stages)
    streams = [s if s.id else s.model_copy(update={"id": stream_id_for(s.uri)}) for s in config.streams]
    return config.model_copy(update={"streams": streams})


def check_track_timeouts(stages: Any) -> None:
    """Each stage's wall-clock `orphaned_track_timeout_s` (forget a track whose end never came) must be longer than
    the track lifetime that ends tracks, or a stage would forget a walker detect_track still follows."""
    lifetime_s = stages.detect_track.track_lifetime_s
    short = [f"stages.{name}.orphaned_track_timeout_s ({timeout_s:g} s) must be longer than "
             f"stages.detect_track.track_lifetime_s ({lifetime_s:g} s): it only forgets tracks whose end was lost"
             for name in ("gait", "match", "sink")
             if (timeout_s := getattr(stages, name).orphaned_track_timeout_s) <= lifetime_s]
    if short:
        raise ConfigError("\n".join(short))
