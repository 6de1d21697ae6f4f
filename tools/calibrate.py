"""Record an encoder's calibration in its weights: the open-set decision (threshold and the margin ratio it was
chosen with) and its training walking direction.

    python tools/calibrate.py weights/gaitbase_wild_synthetic_compact_casiab.pt --accept-distance 0.465 \\
        --margin-ratio 0.8 --walk-direction right_to_left \\
        --source "tools/matcher_rules.py casiab.npz usf.npz --calibrate-decision 0.8 --gallery-size 10"

The pipeline reads them from the weights (stages.match.accept_distance and margin_ratio: null,
stages.gait.canonical_direction: auto), so switching encoders can never leave a decision calibrated for another
one. The ONNX file beside the weights is exported again so both backends carry the same calibration; the encoder's
name changes with the file (re-enrol galleries made with the old file). How to choose the threshold: README,
"Calibrating on your cameras".
Exit codes: 0 written, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engines.backends import WALK_DIRECTIONS
from engines.backends.onnxruntime_backend import export_onnx
from engines.errors import EngineError
from engines.gait.weights import update_metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, help="release weights (.pt)")
    parser.add_argument("--accept-distance", type=float, help="open-set threshold (part-normalised cosine)")
    parser.add_argument("--margin-ratio", type=float, help="the margin ratio the threshold was calibrated with")
    parser.add_argument("--walk-direction", choices=[*WALK_DIRECTIONS, "none"],
                        help="which way the training walkers crossed the image (none: both, e.g. flipped data)")
    parser.add_argument("--source", action="append", default=[], help="where the numbers come from (repeatable)")
    parser.add_argument("--no-onnx", action="store_true", help="do not re-export the .onnx beside the weights")
    args = parser.parse_args(argv)
    if args.accept_distance is None and args.walk_direction is None:
        parser.error("give --accept-distance (and --margin-ratio) and/or --walk-direction")
    if args.margin_ratio is not None and (args.accept_distance is None or not 0 < args.margin_ratio <= 1):
        parser.error("--margin-ratio goes with --accept-distance and lies in (0, 1]")
    if args.accept_distance is not None and not 0 < args.accept_distance < 2:
        parser.error("--accept-distance must lie in (0, 2)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    fields: dict[str, object] = {}
    if args.accept_distance is not None:
        fields["accept_distance"] = args.accept_distance
        fields["calibration_sources"] = args.source
        fields["margin_ratio"] = args.margin_ratio
    if args.walk_direction is not None:
        fields["walk_direction"] = None if args.walk_direction == "none" else args.walk_direction
    try:
        metadata = update_metadata(args.weights, **fields)
        print(f"{args.weights}: accept_distance {metadata.get('accept_distance')}, margin_ratio "
              f"{metadata.get('margin_ratio')}, walk_direction {metadata.get('walk_direction')}")
        onnx_path = args.weights.with_suffix(".onnx")
        if onnx_path.is_file() and not args.no_onnx:
            info = export_onnx(args.weights, onnx_path)
            print(f"wrote {onnx_path} (encoder {info.name})")
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
