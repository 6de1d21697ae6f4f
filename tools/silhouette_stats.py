"""How much the silhouettes a pipeline cuts out of real footage look like the ones an encoder was trained on.

    python tools/silhouette_stats.py --pipeline runs/sils/kth runs/sils/shared --views 072,090,108 \\
        --augment-config configs/train/gaitbase_wild_compact_casiab.yaml --json docs/results/silhouette_stats.json

Two simple statistics per frame, on the 64x44 network input: the fill ratio (share of person pixels: fat instance
masks and merged limbs raise it) and the leg gap (whether some row of the lowest quarter of the body crosses the
person twice: legs apart; merged or blurred legs lose it). Reported for CASIA-B's training subjects as stored, the
same with a training config's augmentations applied, and each folder of pipeline silhouettes (OpenGait's pkl layout,
as `run_pipeline.py --save-silhouettes` and `tools/eval_wild.py --save-silhouettes` write it).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.data.augment import augment_sequence
from engines.data.sequences import CASIA_B_TRAIN_SUBJECTS, default_casia_b_root, open_dataset
from engines.errors import EngineError
from engines.reports import write_report


def frame_statistics(silhouettes: NDArray[np.uint8]) -> dict[str, NDArray[np.float64]]:
    """(T, 64, 44) -> per frame: fill ratio, leg gap (0/1)."""
    masks = silhouettes > 127
    fill = masks.mean(axis=(1, 2))
    gaps = np.zeros(len(masks))
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size < 8:
            continue
        low = mask[rows[0] + (3 * rows.size) // 4: rows[-1] + 1].astype(np.int8)
        starts = (np.diff(low, axis=1, prepend=0) == 1).sum(axis=1)  # runs of person pixels per row
        gaps[i] = float((starts >= 2).any())
    return {"fill": fill, "leg_gap": gaps}


def summarise(name: str, sequences: list[NDArray[np.uint8]]) -> dict[str, object]:
    stats = [frame_statistics(s) for s in sequences if len(s)]
    fill = np.concatenate([s["fill"] for s in stats])
    gaps = np.concatenate([s["leg_gap"] for s in stats])
    p10, p50, p90 = np.percentile(fill, [10, 50, 90])
    return {"source": name, "sequences": len(stats), "frames": int(len(fill)),
            "fill_mean": round(float(fill.mean()), 4), "fill_p10": round(float(p10), 4),
            "fill_p50": round(float(p50), 4), "fill_p90": round(float(p90), 4),
            "leg_gap_frequency": round(float(gaps.mean()), 4)}


def pipeline_sequences(folder: Path) -> list[NDArray[np.uint8]]:
    """Every `*/000/000.pkl` under `folder` (one per saved track)."""
    sequences = []
    for path in sorted(folder.rglob("000.pkl")):
        with open(path, "rb") as handle:
            sequences.append(np.asarray(pickle.load(handle), np.uint8))  # trusted: written by this project
    if not sequences:
        raise EngineError(f"{folder}: no saved silhouettes (*/000/000.pkl); run with --save-silhouettes first")
    return sequences


def casia_sequences(root: Path, count: int, seed: int, views: list[str] | None) -> list[NDArray[np.uint8]]:
    dataset = open_dataset(root, CASIA_B_TRAIN_SUBJECTS)
    pool = [i for i, key in enumerate(dataset.keys) if views is None or key.view in views]
    rng = np.random.default_rng(seed)
    return [dataset.frames(int(i)) for i in rng.choice(pool, min(count, len(pool)), replace=False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=Path, nargs="*", default=[], help="folders of saved silhouettes")
    parser.add_argument("--casia-b", type=Path, default=default_casia_b_root() / "sils-64x64-bin")
    parser.add_argument("--sequences", type=int, default=400, help="CASIA-B training sequences sampled")
    parser.add_argument("--views", type=lambda text: text.split(","), default=None,
                        help="CASIA-B views to sample, e.g. 072,090,108 for side views (default: all)")
    parser.add_argument("--augment-config", type=Path, action="append", default=[],
                        help="training YAML whose data.augment is applied to the CASIA-B sample (repeatable)")
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    try:
        from engines.train import load_train_config

        casia = casia_sequences(args.casia_b, args.sequences, seed=0, views=args.views)
        views = f", views {','.join(args.views)}" if args.views else ""
        rows = [summarise(f"CASIA-B (training subjects{views})", casia)]
        for config_path in args.augment_config:
            augment = load_train_config(config_path).data.augment
            rng = np.random.default_rng(0)
            rows.append(summarise(f"CASIA-B + {config_path.stem} augmentations",
                                  [augment_sequence(s, augment, rng) for s in casia]))
        rows += [summarise(f"pipeline: {folder}", pipeline_sequences(folder)) for folder in args.pipeline]
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'source':<60}{'seqs':>6}{'frames':>8}{'fill':>7}{'p10':>7}{'p90':>7}{'leg gap':>9}")
    for row in rows:
        print(f"{row['source']:<60}{row['sequences']:>6}{row['frames']:>8}{row['fill_mean']:>7.3f}"
              f"{row['fill_p10']:>7.3f}{row['fill_p90']:>7.3f}{row['leg_gap_frequency']:>9.2f}")
    if args.json is not None:
        write_report(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
