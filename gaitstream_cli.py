"""`gaitstream COMMAND ...`: one command for every tool of the project (installed by `pip install -e .`).

    gaitstream run --rtsp rtsp://camera/stream          # = python run_pipeline.py ...
    gaitstream node deploy/node-a.yaml                   # = python run_pipeline.py --node deploy/node-a.yaml
    gaitstream enroll --name alice --source walk.mp4     # = python tools/enroll.py ...
    gaitstream gallery list                              # = python tools/gallery.py ...

Each command runs the script of the same name in the checkout with the remaining arguments, exactly as
`python SCRIPT ...` would; `gaitstream COMMAND --help` shows its options.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
COMMANDS = {
    "run": ("run_pipeline.py", "run the pipeline on cameras or recorded footage"),
    "node": ("run_pipeline.py", "run one host of a site: its cameras, or those it holds a lease on"),
    "enroll": ("tools/enroll.py", "enrol a person from a video or a live stream"),
    "gallery": ("tools/gallery.py", "list, rename, delete, export and import identities"),
    "eval": ("tools/eval.py", "evaluate an encoder on CASIA-B, USF HumanID or synthetic 3D"),
    "eval-wild": ("tools/eval_wild.py", "enrol and identify real people through the pipeline (cross-scene)"),
    "calibrate": ("tools/calibrate.py", "store an encoder's open-set threshold and walking direction"),
    "silhouette-stats": ("tools/silhouette_stats.py", "compare pipeline silhouettes with the training data's"),
    "bench": ("tools/bench.py", "benchmarks: pipeline, streams, soak, transport, encoder, matcher"),
    "train": ("tools/train.py", "train a gait encoder"),
    "export": ("tools/export.py", "export an encoder to ONNX"),
    "build-engine": ("tools/build_engine.py", "build a TensorRT engine (NVIDIA machines)"),
    "make-synthetic": ("tools/make_synthetic.py", "generate the synthetic 3D gait set"),
    "make-keys": ("tools/make_keys.py", "create CURVE keys for tcp edges between hosts"),
}

LEADING_ARGUMENTS = {"node": ("--node",)}  # `gaitstream node CONFIG` is `run_pipeline.py --node CONFIG`


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "usage: gaitstream COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"error: unknown command {args[0]!r}\n\n{usage()}", end="", file=sys.stderr)
        return 2
    script = ROOT / command[0]
    if not script.is_file():
        print(f"error: {script} is missing: the gaitstream command runs the tools of a source checkout "
              "(install it with `pip install -e .` there)", file=sys.stderr)
        return 2
    sys.argv = [f"gaitstream {args[0]}", *LEADING_ARGUMENTS.get(args[0], ()), *args[1:]]
    sys.path.insert(0, str(ROOT))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
