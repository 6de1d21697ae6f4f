"""run_pipeline's flags against the config: a flag given wins, a flag absent leaves the config's value."""

from __future__ import annotations

from pathlib import Path

import pytest

from run_pipeline import cli_overrides, parse_args
from stages import load_pipeline_config

# (flags, config key, the config file's value, the flag's value)
FLAGS = [
    (["--no-display"], "stages.sink.display", True, False),
    (["--save-silhouettes"], "stages.sink.save_silhouettes", False, True),
    (["--events-endpoint", "tcp://127.0.0.1:5599"], "stages.sink.events_endpoint", "tcp://127.0.0.1:5570",
     "tcp://127.0.0.1:5599"),
    (["--metrics-port", "9200"], "runtime.metrics_port", 9100, 9200),
    (["--log-level", "DEBUG"], "runtime.log_level", "WARNING", "DEBUG"),
]


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text("runtime:\n  metrics_port: 9100\n  log_level: WARNING\nstages:\n  sink:\n    display: true\n"
                    "    save_silhouettes: false\n    events_endpoint: tcp://127.0.0.1:5570\n"
                    f"    out_dir: {tmp_path / 'from-config'}\n")
    return path


def _value(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _load(argv: list[str]):
    args = parse_args(argv)
    return load_pipeline_config(args.config, cli_overrides(args))


@pytest.mark.parametrize(("flags", "key", "in_file", "flagged"), FLAGS, ids=[f[0][0] for f in FLAGS])
def test_a_flag_given_wins_and_an_absent_flag_leaves_the_config_value(tmp_path: Path, flags, key, in_file, flagged):
    path = _config_file(tmp_path)
    assert _value(_load(["--config", str(path)]), key) == in_file
    assert _value(_load(["--config", str(path), *flags]), key) == flagged


def test_set_reaches_keys_that_also_have_a_flag(tmp_path: Path):
    """`--set stages.sink.display=false` used to be overwritten by the absent --no-display."""
    path = _config_file(tmp_path)
    assert _load(["--config", str(path), "--set", "stages.sink.display=false"]).stages.sink.display is False
    assert _load(["--config", str(path)]).stages.sink.out_dir == tmp_path / "from-config"
    out = _load(["--config", str(path), "--out", str(tmp_path / "from-flag")]).stages.sink.out_dir
    assert out == tmp_path / "from-flag"
