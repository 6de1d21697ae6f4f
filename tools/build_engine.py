"""Build a TensorRT 10 engine from an exported ONNX encoder (NVIDIA machines with `pip install .[tensorrt]`).

    python tools/build_engine.py weights/gaitbase_compact_casiab.onnx --out weights/gaitbase_compact_casiab.engine \
        --fp16 --max-batch 16 --frames 10,30,120

One optimisation profile: batch 1..MAX_BATCH (tuned for half of it) and frames MIN..MAX (tuned for OPT), so the
engine runs every window length in that range. Writes X.engine and X.engine.json (the encoder's identity, which
the engine itself cannot hold). Engines are specific to the GPU and TensorRT version that built them.
Exit 2 with one `error:` line when TensorRT is not installed or the build fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engines.backends.tensorrt_backend import build_engine, profile_shapes
from engines.errors import EngineError


def parse_frames(text: str) -> tuple[int, ...]:
    """"10,30,120" -> (10, 30, 120); "30" -> (30,)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX or one number, got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", type=Path, help="encoder exported by tools/export.py")
    parser.add_argument("--out", type=Path, default=None, help="engine to write (default: ONNX with .engine)")
    parser.add_argument("--fp16", action="store_true", help="allow fp16 kernels (about 2x faster, cosine ~0.999)")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch the engine accepts")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch to tune for (default: half the max)")
    parser.add_argument("--frames", type=parse_frames, default=(10, 30, 120), metavar="MIN,OPT,MAX",
                        help="window lengths the engine accepts and the one it is tuned for")
    parser.add_argument("--workspace-gib", type=float, default=2.0, help="builder workspace memory limit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        shapes = profile_shapes(args.max_batch, args.frames, args.opt_batch)
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or args.onnx.with_suffix(".engine")
    try:
        build_engine(args.onnx, out, shapes=shapes, fp16=args.fp16, workspace_gib=args.workspace_gib)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (min {shapes.min}, opt {shapes.opt}, max {shapes.max}, fp16 {args.fp16})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
