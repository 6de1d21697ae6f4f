"""Gait encoder latency and throughput per backend and batch size on real CASIA-B windows.

    python tools/bench.py encoder                                   # compact GaitBase architecture, random weights
    python tools/bench.py encoder --weights weights/gaitbase_compact_casiab.pt --threads 2 --batches 1,4,8

Speed does not depend on the weights' values, so without --weights the training config's architecture is
initialised at random (and exported to ONNX in a temporary folder). Every backend gets the same thread count.
Records p50/p95 latency per call (ms) and throughput (sequences/s) for 30-frame windows, plus
`onnxruntime_vs_torch_speedup_t30_b1` (torch p50 / ONNX Runtime p50 at batch 1).
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

COMPACT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "gaitbase_compact_casiab.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=None,
                        help="weights .pt (default: random weights of the compact training config's architecture)")
    parser.add_argument("--onnx", type=Path, default=None, help="exported ONNX (default: beside --weights, or export)")
    parser.add_argument("--engine", type=Path, default=None, help="TensorRT engine (benchmarked when it can run)")
    parser.add_argument("--backends", default="torch,onnxruntime,tensorrt", help="comma-separated")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes, comma-separated")
    parser.add_argument("--frames", type=int, default=30, help="frames per window")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every backend")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case (after warm-up)")
    parser.add_argument("--dataset", type=Path, default=default_casia_b_root() / "sils-64x64-bin")


def _random_weights(folder: Path) -> Path:
    import torch

    from engines.gait.gaitbase import GaitBase, GaitBaseConfig
    from engines.gait.weights import save_weights
    from engines.train import load_train_config

    config = load_train_config(COMPACT_CONFIG)
    torch.manual_seed(0)
    model = GaitBase(GaitBaseConfig(**config.model.model_dump()))
    path = folder / "random_compact.pt"
    save_weights(model, path, name="random-compact", metadata={"note": "random weights, for timing only"})
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


def run(args: argparse.Namespace) -> dict:
    batches = [int(b) for b in args.batches.split(",")]
    wanted = args.backends.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or _random_weights(Path(tmp))
        onnx_path = args.onnx or weights.with_suffix(".onnx")
        if "onnxruntime" in wanted and not onnx_path.is_file():
            onnx_path = Path(tmp) / "encoder.onnx"
            export_onnx(weights, onnx_path)
        engine = args.engine or weights.with_suffix(".engine")
        artefacts = {"torch": weights, "onnxruntime": onnx_path, "tensorrt": engine}
        windows = real_windows(args.dataset, max(batches), args.frames)
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
                log.info("encoder bench backend=%s batch=%d %s", backend, batch, results[backend][f"b{batch}"])
        report: dict = {"weights": str(args.weights) if args.weights else f"random init of {COMPACT_CONFIG.name}",
                        "frames": args.frames, "threads": args.threads, "device": args.device, "results": results,
                        "skipped": skipped}
    if "torch" in results and "onnxruntime" in results and "b1" in results["torch"]:
        report[f"onnxruntime_vs_torch_speedup_t{args.frames}_b1"] = round(
            results["torch"]["b1"]["p50_ms"] / results["onnxruntime"]["b1"]["p50_ms"], 2)
    return report
