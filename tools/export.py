"""Export gait encoder weights to ONNX (dynamic batch and frame axes) and check it against torch on CASIA-B.

    python tools/export.py weights/gaitbase_compact_casiab.pt --out weights/gaitbase_compact_casiab.onnx

The check encodes real CASIA-B windows with torch and ONNX Runtime at batch 1 and 8 and 10, 30 and 100 frames,
prints the largest absolute difference and the smallest cosine similarity per case, and exits 1 when any cosine
is below 0.9999 (the file is still written, for inspection). Exit 2: the weights or dataset cannot be read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engines.backends.onnxruntime_backend import DEFAULT_OPSET, export_onnx
from engines.backends.parity import MIN_COSINE, compare_encoders
from engines.data.sequences import default_casia_b_root
from engines.errors import EngineError
from engines.gait.encoder import open_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, help="weights .pt or training checkpoint")
    parser.add_argument("--out", type=Path, default=None, help="ONNX file to write (default: WEIGHTS with .onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17 or newer)")
    parser.add_argument("--dataset", type=Path, default=default_casia_b_root() / "sils-64x64-bin",
                        help="CASIA-B npz folder for the parity check")
    parser.add_argument("--no-check", action="store_true", help="skip the torch vs ONNX Runtime check")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one line per graph pass otherwise
    out = args.out or args.weights.with_suffix(".onnx")
    try:
        info = export_onnx(args.weights, out, opset=args.opset)
        print(f"wrote {out} (encoder {info.name}, {info.parts} parts x {info.part_dim}, opset {args.opset})")
        if args.no_check:
            return 0
        reference = open_encoder(args.weights, backend="torch", device="cpu", threads=args.threads)
        candidate = open_encoder(out, backend="onnxruntime", device="cpu", threads=args.threads)
        cases = compare_encoders(reference, candidate, args.dataset)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'batch':>5} {'frames':>6} {'max |diff|':>11} {'min cosine':>11}")
    for case in cases:
        print(f"{case.batch:>5} {case.frames:>6} {case.max_abs_diff:>11.2e} {case.min_cosine:>11.7f}")
    worst = min(case.min_cosine for case in cases)
    if worst < MIN_COSINE:
        print(f"error: ONNX Runtime disagrees with torch (min cosine {worst:.7f} < {MIN_COSINE})", file=sys.stderr)
        return 1
    print(f"ok: ONNX Runtime matches torch (min cosine {worst:.7f} >= {MIN_COSINE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
