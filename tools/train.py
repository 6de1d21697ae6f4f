"""Train a gait encoder from a YAML config, or write release weights from a run's checkpoint.

    python tools/train.py --config configs/train/gaitbase_compact_casiab.yaml            # start
    python tools/train.py --config configs/train/gaitbase_compact_casiab.yaml --resume   # continue from the newest
    python tools/train.py --config ... --export-weights weights/gaitbase_compact_casiab.pt
    python tools/train.py --config ... --park weights/parked              # keep the newest checkpoint in git
    python tools/train.py --config ... --resume --unpark weights/parked   # on a fresh machine: continue from it
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engines.errors import EngineError
from engines.train import export_weights, load_train_config, park_run, train, unpark_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="training YAML (configs/train/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop (with a checkpoint) at this step instead of the planned total")
    parser.add_argument("--export-weights", type=Path, default=None, metavar="OUT.pt",
                        help="do not train: write fp16 release weights from a checkpoint to OUT.pt")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="with --export-weights: the checkpoint to export (default: the run's newest)")
    parser.add_argument("--threads", type=int, default=None,
                        help="override runtime.threads (e.g. while another run shares the CPU); resuming may change it")
    parser.add_argument("--park", type=Path, default=None, metavar="DIR",
                        help="do not train: copy the run's newest checkpoint and loss log to DIR/<run folder>/ "
                             "(commit it; runs/ does not survive a fresh machine)")
    parser.add_argument("--unpark", type=Path, default=None, metavar="DIR",
                        help="with --resume: first take DIR/<run folder>/'s checkpoint when the run holds none newer")
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        config = load_train_config(args.config)
        if args.threads is not None:
            config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"threads": args.threads})})
        if args.print_config:
            print(config.model_dump_json(indent=2))
            return 0
        if args.park is not None:
            print(f"parked {park_run(config, args.park)}")
            return 0
        if args.unpark is not None:
            if not args.resume:
                parser.error("--unpark needs --resume")
            unpark_run(config, args.unpark)
        if args.export_weights is not None:
            out = export_weights(config, args.checkpoint, args.export_weights)
            print(f"wrote {out}")
            return 0
        result = train(config, resume=args.resume, stop_step=args.stop_at_step, progress=not args.no_progress)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"stopped at step {result.step}; checkpoint {result.last_checkpoint}; weights {result.weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
