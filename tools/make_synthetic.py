"""Generate (or finish) the synthetic 3D gait dataset for Mesh-Gait: rendered walkers with known 3D.

    python tools/make_synthetic.py                                   # 100 subjects into runs/synthetic
    python tools/make_synthetic.py --out /tmp/syn --subjects 3 --frames 12
    python tools/make_synthetic.py --body-model SMPL_NEUTRAL.pkl     # a real SMPL file (plain numpy arrays)
    python tools/make_synthetic.py --out runs/synthetic_wild --subjects 300 --elevation-max 45 --distance-scale 1 2.5

Subjects already written are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engines.data.synthetic import SyntheticSpec, generate_synthetic
from engines.errors import EngineError


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=defaults.out, help=f"dataset root (default {defaults.out})")
    parser.add_argument("--subjects", type=int, default=defaults.subjects, help="number of identities")
    parser.add_argument("--frames", type=int, default=defaults.frames, help="frames per sequence (25 fps)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="everything generated follows from it")
    parser.add_argument("--body-model", type=Path, default=None, metavar="PKL",
                        help="SMPL-format body model (default: the open model, written to OUT/body_model.pkl)")
    parser.add_argument("--elevation-max", type=float, default=defaults.elevation_max_deg, metavar="DEG",
                        help="cameras look down by up to this angle, drawn per sequence (default: level)")
    parser.add_argument("--distance-scale", type=float, nargs=2, default=defaults.distance_scale,
                        metavar=("LOW", "HIGH"), help="camera distance factor drawn per sequence (smaller walkers)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: one per core; the files do not depend on it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        spec = SyntheticSpec(out=args.out, subjects=args.subjects, frames=args.frames, seed=args.seed,
                             body_model=args.body_model, elevation_max_deg=args.elevation_max,
                             distance_scale=tuple(args.distance_scale))
        summary = generate_synthetic(spec, progress=not args.no_progress, workers=args.workers)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.root}: {len(summary.written)} subjects written, {len(summary.skipped)} already there, "
          f"{summary.bytes_on_disk / 1e6:.0f} MB, {summary.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
