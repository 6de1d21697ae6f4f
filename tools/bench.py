"""Benchmarks whose numbers go into README and the issue notes; every run writes JSON.

    python tools/bench.py encoder   --json runs/bench/encoder.json     # gait encoder per backend and batch size
    python tools/bench.py matcher   --json runs/bench/matcher.json     # gallery search cost per query
    python tools/bench.py transport --json runs/bench/transport.json   # one 1080p frame hop between processes
    python tools/bench.py pipeline  --json runs/bench/pipeline.json    # multi-process vs sequential, per stage
    python tools/bench.py streams   --json runs/bench/streams.json     # how many real-time streams fit
    python tools/bench.py soak      --json runs/bench/soak.json        # memory of every process over 10 minutes

Each subcommand lives in `tools/benchmarks/<name>.py` with `add_arguments(parser)` and `run(args) -> dict`; the
JSON also records the machine it ran on, so a number is never quoted without its hardware.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

# Stage processes run numpy's BLAS single-threaded unless their config says otherwise (pipeline/supervisor.py);
# measure the same way. Must be set before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from engines.reports import write_report  # noqa: E402  (numpy-free: the thread settings above still apply)

SUBCOMMANDS = ("encoder", "matcher", "transport", "pipeline", "streams", "soak")


def machine() -> dict:
    """What the numbers were measured on."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.{name}":
                raise
            continue
        modules[name] = module
        sub = commands.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        sub.add_argument("--json", type=Path, default=Path("runs/bench") / f"{name}.json", help="where to write")
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    started = time.time()
    try:
        result = modules[args.command].run(args)
    except Exception as exc:  # one clear line for expected failures (missing weights, bad paths)
        if type(exc).__module__.startswith(("engines", "pipeline")) or isinstance(exc, (OSError, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    report = {"benchmark": args.command, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
              "seconds": round(time.time() - started, 1), "machine": machine(), **result}
    print(json.dumps(result, indent=2))
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    # This tree's code, not whichever checkout the environment installed (spawned processes inherit the path).
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    sys.exit(main())
