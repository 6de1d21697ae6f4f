"""Gait encoder latency and throughput per backend and batch size on real CASIA-B windows.

    python tools/bench.py encoder                     # compact GaitBase and Mesh-Gait architectures, random weights
    python tools/bench.py encoder --weights weights/gaitbase_compact_casiab.pt --threads 2 --batches 1,4,8

Speed does not depend on the weights' values, so without --weights the architectures of the two compact training
configs (GaitBase and Mesh-Gait) are initialised at random (and exported to ONNX in a temporary folder). Every
backend gets the same thread count. Records per model p50/p95 latency per call (ms) and throughput (sequences/s)
for 30-frame windows and `onnxruntime_vs_torch_speedup_t30_b1` (torch p50 / ONNX Runtime p50 at batch 1); with
both models, `meshgait_vs_gaitbase_latency_t30_b1` per backend (Mesh-Gait p50 / GaitBase p50: the cost of the 3D
branch at inference).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from engines.backends.onnxruntime_backend import export_onnx
from engines.backends.parity import real_windows
from engines.backends.tensorrt_backend import tensorrt_unavailable_reason
from engines.data.sequences import default_casia_b_root
from engines.gait.encoder import GaitEncoder, open_encoder

log = logging.getLogger(__name__)

TRAIN_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
COMPACT_CONFIGS = {"gaitbase": TRAIN_CONFIGS / "gaitbase_compact_casiab.yaml",
                   "meshgait": TRAIN_CONFIGS / "meshgait_compact_casiab.yaml"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, nargs="+", default=None,
                        help="weights .pt files (default: random weights of the compact GaitBase and Mesh-Gait)")
    parser.add_argument("--backends", default="torch,onnxruntime,tensorrt", help="comma-separated")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes, comma-separated")
    parser.add_argument("--frames", type=int, default=30, help="frames per window")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every backend")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case (after warm-up)")
    parser.add_argument("--dataset", type=Path, default=default_casia_b_root() / "sils-64x64-bin")


def _random_weights(folder: Path, kind: str) -> Path:
    """Random weights of a compact training config's architecture (the mesh size does not affect inference)."""
    import torch

    from engines.gait.weights import build_model, save_weights
    from engines.train import load_train_config

    config = load_train_config(COMPACT_CONFIGS[kind])
    architecture = config.model.model_dump()
    if config.branch_3d is not None:
        architecture.update(config.branch_3d.model_dump(), vertices=6890)
    torch.manual_seed(0)
    path = folder / f"random_{kind}.pt"
    save_weights(build_model(kind, architecture), path, name=f"random-{kind}-compact",
                 metadata={"note": "random weights, for timing only"})
    return path


def time_encoder(encoder: GaitEncoder, windows: np.ndarray, seconds: float) -> dict[str, float]:
    """Latency percentiles (ms per call) and throughput (sequences/s) of `encoder.encode(windows)`."""
    for _ in range(3):
        encoder.encode(windows)
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < 5:
        started = time.perf_counter()
        encoder.encode(windows)
        latencies.append(time.perf_counter() - started)
    ms = np.asarray(latencies) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "sequences_per_s": round(len(windows) * len(ms) / (ms.sum() / 1e3), 1), "calls": len(ms)}


def _bench_model(weights: Path, args: argparse.Namespace, windows: np.ndarray, folder: Path) -> dict:
    """Every wanted backend at every batch size for one weights file; its ONNX and engine are looked for beside it."""
    batches = [int(b) for b in args.batches.split(",")]
    onnx_path = weights.with_suffix(".onnx")
    wanted = args.backends.split(",")
    if "onnxruntime" in wanted and not onnx_path.is_file():
        onnx_path = folder / f"{weights.stem}.onnx"
        export_onnx(weights, onnx_path)
    engine = weights.with_suffix(".engine")
    artefacts = {"torch": weights, "onnxruntime": onnx_path, "tensorrt": engine}
    results: dict[str, dict[str, dict[str, float]]] = {}
    skipped = {}
    for backend in wanted:
        if backend == "tensorrt":
            reason = ("device cpu" if args.device == "cpu" else tensorrt_unavailable_reason()) or (
                None if engine.is_file() else f"no engine at {engine}")
            if reason:
                skipped[backend] = reason
                continue
        encoder = open_encoder(artefacts[backend], backend=backend, device=args.device, threads=args.threads)
        results[backend] = {}
        for batch in batches:
            results[backend][f"b{batch}"] = time_encoder(encoder, windows[:batch], args.seconds)
            log.info("encoder bench weights=%s backend=%s batch=%d %s", weights.name, backend, batch,
                     results[backend][f"b{batch}"])
    report: dict = {"weights": str(weights), "results": results, "skipped": skipped}
    if "torch" in results and "onnxruntime" in results and "b1" in results["torch"]:
        report[f"onnxruntime_vs_torch_speedup_t{args.frames}_b1"] = round(
            results["torch"]["b1"]["p50_ms"] / results["onnxruntime"]["b1"]["p50_ms"], 2)
    return report


def run(args: argparse.Namespace) -> dict:
    from engines.gait.weights import load_gait_model

    batches = [int(b) for b in args.batches.split(",")]
    windows = real_windows(args.dataset, max(batches), args.frames)
    models: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights_files = args.weights or [_random_weights(folder, kind) for kind in COMPACT_CONFIGS]
        for weights in weights_files:
            kind = load_gait_model(weights)[1]["kind"]
            models[kind if kind not in models else weights.stem] = _bench_model(weights, args, windows, folder)
    report: dict = {"frames": args.frames, "threads": args.threads, "device": args.device,
                    "weights": "given" if args.weights else "random init of the compact training configs",
                    "models": models}
    if "gaitbase" in models and "meshgait" in models:
        base, mesh = models["gaitbase"]["results"], models["meshgait"]["results"]
        report[f"meshgait_vs_gaitbase_latency_t{args.frames}_b1"] = {
            backend: round(mesh[backend]["b1"]["p50_ms"] / base[backend]["b1"]["p50_ms"], 2)
            for backend in base if backend in mesh and "b1" in base[backend] and "b1" in mesh[backend]}
    return report
