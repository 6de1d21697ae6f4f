"""Gallery search cost per query: a synthetic gallery of N identities x K embeddings, the real GalleryIndex."""

from __future__ import annotations

import argparse
import time

import numpy as np

from engines.gallery import GallerySnapshot
from engines.matching import GalleryIndex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--per-identity", type=int, default=10)
    parser.add_argument("--parts", type=int, default=16, help="the compact GaitBase's: 16 parts x 128")
    parser.add_argument("--part-dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=300)


def synthetic_gallery(identities: int, per_identity: int, dim: int, seed: int = 0):
    """Identity centres plus per-embedding noise, the structure real gait embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim)).astype(np.float32)
    vectors = np.repeat(centres, per_identity, axis=0) + 0.6 * rng.normal(size=(identities * per_identity, dim)
                                                                          ).astype(np.float32)
    owners = np.repeat(np.arange(identities), per_identity)
    return centres, vectors, owners


def run(args: argparse.Namespace) -> dict:
    dim = args.parts * args.part_dim
    centres, vectors, owners = synthetic_gallery(args.identities, args.per_identity, dim)
    names = tuple(f"id-{i:05d}" for i in range(args.identities))
    started = time.perf_counter()
    index = GalleryIndex(GallerySnapshot(names, vectors, owners, "bench@0", args.parts))
    build_ms = (time.perf_counter() - started) * 1e3
    rng = np.random.default_rng(1)
    truth = rng.integers(0, args.identities, args.queries)
    queries = centres[truth] + 0.6 * rng.normal(size=(args.queries, dim)).astype(np.float32)
    index.query(queries[:5])  # warm-up
    latencies, correct = [], 0
    for query, expected in zip(queries, truth):
        tick = time.perf_counter()
        best = index.query(query[None], top_k=5)[0]
        latencies.append((time.perf_counter() - tick) * 1e3)
        correct += best[0].name == names[expected]
    batch_tick = time.perf_counter()
    index.query(queries, top_k=5)
    batch_ms = (time.perf_counter() - batch_tick) * 1e3 / args.queries
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {
        "identities": args.identities, "embeddings_per_identity": args.per_identity, "dim": dim,
        "search": index.strategy, "index_build_ms": round(build_ms, 1),
        "query_ms": {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3)},
        "batched_query_ms_each": round(batch_ms, 3),
        "rank1_on_synthetic_queries": correct / args.queries,
        "under_5ms_p50": bool(p50 < 5.0),
    }
