"""Evaluate a gait encoder on CASIA-B (subjects 075-124): cross-view Rank-1, Rank-1/5, mAP, mINP, open-set calibration.

    python tools/eval.py --weights weights/gaitbase_compact_casiab.pt --json runs/eval/compact.json
    python tools/eval.py --weights W.onnx --backend onnxruntime --subjects 075-084 --max-frames 30   # quick look
    python tools/eval.py --from-embeddings runs/eval/compact.npz                  # recompute from a dump
    python tools/eval.py --weights weights/meshgait_compact_casiab.pt --synthetic runs/synthetic   # Mesh-Gait 3D
    python tools/eval.py --weights weights/meshgait_compact_casiab.pt --usf ../shared/assets/datasets/usf-humanid

Protocol (GaitSet/OpenGait): gallery NM-01..04; probes NM-05/06, BG-01/02, CL-01/02; Rank-1 per probe view
against each other gallery view, averaged over gallery views, then over probe views; distance = per-part
Euclidean averaged over parts. `open_set` in the JSON holds genuine/impostor statistics and the acceptance
threshold at each --far for the matcher's part-normalised cosine distance (stages.match `accept_distance`).
`--dump-embeddings` writes `embeddings` (N, P, C) float32 and `subjects`, `conditions`, `views` str arrays.

`--synthetic ROOT` evaluates Mesh-Gait's 3D reconstruction instead, on the synthetic set's held-out identities (all
views): MPJPE of the 24 joints, virtual-marker error and per-vertex mesh error in mm, root-relative with the ground
truth's scale, for the views seen in training and the held-out views (`engines.evaluation.reconstruction_errors`).

`--usf DIR` evaluates on USF HumanID (real, outdoor; `engines.data.usf`): `Gal.npz` is the gallery, each of
`--probes` a probe set; a subject's consecutive half cycles form one sequence, pretreated to 64x44 as the pipeline's
masks are. Subject-level Rank-1 under the matcher's distance (and OpenGait's Euclidean), with the gait-energy-image
baseline computed in the same run; the JSON's `probes` maps each probe name to `rank1`, `rank1_euclidean`,
`gei_rank1` (%); `--dump-embeddings` writes them in `tools/eval_wild.py`'s walk format (for `tools/matcher_rules.py`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from engines.data.sequences import CASIA_B_TEST_SUBJECTS, default_casia_b_root, open_dataset
from engines.errors import DatasetError, EngineError
from engines.evaluation import ProbeSetResult, embed_sequences, evaluate_casia_b, format_rank1_table
from engines.gait.encoder import open_encoder
from engines.reports import write_report


def parse_subjects(text: str) -> list[str]:
    """"075-124" -> ["075", ..., "124"]; "075,080" -> ["075", "080"]."""
    subjects: list[str] = []
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            subjects += [f"{i:03d}" for i in range(int(first), int(last or first) + 1)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected subject ranges like 075-124 or 075,080; got {text!r}") from exc
    return subjects


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected rates like 0.01,0.001; got {text!r}") from exc
    if not all(0 < r < 1 for r in rates):
        raise argparse.ArgumentTypeError(f"false-accept rates must lie in (0, 1); got {text!r}")
    return rates


def load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """A `--dump-embeddings` file: embeddings, subjects, conditions, views, encoder name."""
    try:
        with np.load(path) as data:
            return (data["embeddings"], data["subjects"], data["conditions"], data["views"],
                    str(data["encoder"]) if "encoder" in data.files else path.stem)
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: not an embeddings dump from tools/eval.py ({exc})") from exc


def evaluate_reconstruction(args: argparse.Namespace) -> int:
    """`--synthetic`: Mesh-Gait's 3D joints, markers and mesh against the synthetic ground truth, printed and JSON."""
    from engines.data.synthetic import SyntheticGaitDataset, read_meta
    from engines.evaluation import reconstruction_errors, view_mean_poses
    from engines.gait.meshgait import MeshGait
    from engines.gait.weights import load_gait_model

    try:
        model, info = load_gait_model(args.weights)
        if not isinstance(model, MeshGait):
            raise EngineError(f"{args.weights}: a {info['kind']} model has no 3D branch; --synthetic needs Mesh-Gait")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        split = read_meta(args.synthetic)["split"]
        dataset = SyntheticGaitDataset(args.synthetic, subjects=split["test"])
        baseline_poses = view_mean_poses(SyntheticGaitDataset(args.synthetic, subjects=split["train"]),
                                         model.config.joints)
        report = reconstruction_errors(model, dataset, range(len(dataset.keys)), dataset.held_out_views,
                                       args.max_frames, progress=not args.no_progress, baseline_poses=baseline_poses)
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"encoder": info["name"], "weights": str(args.weights), "dataset": str(args.synthetic),
              "subjects": sorted({key.subject for key in dataset.keys}), "sequences": len(dataset.keys), **report}
    print(f"encoder {info['name']}: 3D reconstruction on {len(dataset.keys)} synthetic sequences of "
          f"{len(report['subjects'])} held-out identities ({report['frames']} frames); mm, root-relative")
    print(f"{'':<40}{'all':>8}{'seen views':>12}{'held-out views':>16}")
    for block, suffix in ((report, ""), (report["mirror_resolved"], ", mirror-resolved")):
        for key, label in (("mpjpe_mm", "MPJPE (24 joints)"), ("marker_error_mm", "virtual markers (64)"),
                           ("mpve_mm", "mesh vertices")):
            row = block[key]
            cells = [f"{row[part]:.1f}" if row[part] is not None else "-" for part in ("all", "seen_views",
                                                                                     "held_out_views")]
            print(f"{label + suffix:<40}{cells[0]:>8}{cells[1]:>12}{cells[2]:>16}")
    mirrored = report["mirror_resolved"]
    print(f"mirror-resolved: each frame scored against the nearer of the body and its mirror image (same "
          f"silhouette); the mirror was nearer in {100 * mirrored['mirror_chosen_fraction']:.0f} % of frames")
    print(f"baseline, each view's mean training pose: MPJPE {report['baseline_mean_pose_per_view_mpjpe_mm']:.1f}, "
          f"mirror-resolved {mirrored['baseline_mean_pose_per_view_mpjpe_mm']:.1f} "
          "(engines.evaluation.view_mean_poses)")
    motion = report["joint_motion_mm"]
    print(f"joint motion about its sequence mean: predicted {motion['predicted']:.1f}, true {motion['truth']:.1f}")
    if args.json is not None:
        write_report(args.json, report)
    return 0


def evaluate_usf(args: argparse.Namespace) -> int:
    """`--usf`: subject-level Rank-1 per probe set, beside the GEI baseline, printed and JSON."""
    from engines.data.usf import gei_rank1, read_usf
    from engines.evaluation import part_cosine_distance, part_euclidean_distance
    from engines.wild import WalkDump

    try:
        encoder = open_encoder(args.weights, backend=args.backend, device=args.device, threads=args.threads)
        gallery = read_usf(args.usf / "Gal.npz")
        probes = [read_usf(args.usf / f"{name}.npz") for name in args.probes]

        def embed(walks: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([encoder.encode_parts(walk[None]) for walk in walks])

        gallery_embeddings = embed(gallery.silhouettes)
        results = {}
        dump = WalkDump()  # one walk per subject and set; scene: the set
        for subject, vector in zip(gallery.subjects, gallery_embeddings):
            dump.add([vector], "gallery", "Gal", "gallery", str(subject), enrolled=True)
        for probe in probes:
            embeddings = embed(probe.silhouettes)
            for subject, vector in zip(probe.subjects, embeddings):
                dump.add([vector], "probe", probe.name, probe.name, str(subject), enrolled=True)
            row = {"subjects": int(len(probe.subjects)), "gei_rank1": round(gei_rank1(gallery, probe), 1)}
            for key, distance in (("rank1", part_cosine_distance), ("rank1_euclidean", part_euclidean_distance)):
                nearest = gallery.subjects[distance(embeddings, gallery_embeddings).argmin(1)]
                row[key] = round(100.0 * float(np.mean(nearest == probe.subjects)), 1)
            results[probe.name] = row
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dump_embeddings is not None:
        dump.save(args.dump_embeddings, encoder=encoder.name, parts=gallery_embeddings.shape[1])
    print(f"encoder {encoder.name}: USF HumanID, gallery {len(gallery.subjects)} subjects (Rank-1 %, subject level)")
    print(f"{'probe':<8}{'subjects':>9}{'Rank-1':>8}{'(Euclid.)':>10}{'GEI':>7}")
    for name, row in results.items():
        print(f"{name:<8}{row['subjects']:>9}{row['rank1']:>8.1f}{row['rank1_euclidean']:>10.1f}{row['gei_rank1']:>7.1f}")
    if args.json is not None:
        write_report(args.json, {"encoder": encoder.name, "weights": str(args.weights), "dataset": str(args.usf),
                                 "distance": "part-normalised cosine (the matcher's); rank1_euclidean: OpenGait's",
                                 "gei": "mean raw 32x22 silhouette per subject, Euclidean nearest neighbour",
                                 "probes": results})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="encoder: .pt weights or checkpoint, .onnx or .engine")
    source.add_argument("--from-embeddings", type=Path, metavar="FILE.npz",
                        help="skip the network: evaluate a file written by --dump-embeddings")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the encoder")
    parser.add_argument("--dataset", type=Path, default=default_casia_b_root() / "sils-64x64-bin",
                        help="CASIA-B npz folder or OpenGait pkl tree")
    parser.add_argument("--subjects", type=parse_subjects,
                        default=list(CASIA_B_TEST_SUBJECTS), help="test subjects (default 075-124)")
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of a sequence")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences of equal length per encoder call")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--dump-embeddings", type=Path, default=None, metavar="FILE.npz",
                        help="write embeddings (N, P, C) and subjects/conditions/views")
    parser.add_argument("--open-set", "--calibrate", action="store_true",
                        help="also print the open-set calibration (always in the JSON)")
    parser.add_argument("--far", type=parse_rates, default=[0.01, 0.001],
                        help="false-accept rates to calibrate thresholds for (default 0.01,0.001)")
    parser.add_argument("--synthetic", type=Path, default=None, metavar="ROOT",
                        help="with --weights of a Mesh-Gait: 3D reconstruction on the synthetic set's test identities")
    parser.add_argument("--usf", type=Path, default=None, metavar="DIR",
                        help="USF HumanID folder (Gal.npz and the probe files) instead of CASIA-B")
    parser.add_argument("--probes", type=lambda text: [p for p in text.split(",") if p],
                        default=["PrbA", "PrbB", "PrbC"], help="USF probe files to evaluate (default PrbA,PrbB,PrbC)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if args.synthetic is not None:
        if args.weights is None:
            parser.error("--synthetic needs --weights (a Mesh-Gait .pt)")
        return evaluate_reconstruction(args)
    if args.usf is not None:
        if args.weights is None:
            parser.error("--usf needs --weights")
        return evaluate_usf(args)
    try:
        if args.from_embeddings is not None:
            embeddings, subjects, conditions, views, encoder_name = load_embeddings(args.from_embeddings)
            meta = {"encoder": encoder_name, "embeddings": str(args.from_embeddings)}
        else:
            encoder = open_encoder(args.weights, backend=args.backend, device=args.device, threads=args.threads)
            dataset = open_dataset(args.dataset, args.subjects)
            indices = list(range(len(dataset.keys)))
            embeddings = embed_sequences(encoder, dataset, indices, args.max_frames, args.batch_size,
                                         progress=not args.no_progress)
            subjects = np.asarray([k.subject for k in dataset.keys])
            conditions = np.asarray([k.condition for k in dataset.keys])
            views = np.asarray([k.view for k in dataset.keys])
            encoder_name = encoder.name
            meta = {"encoder": encoder.name, "backend": encoder.backend, "device": encoder.device,
                    "weights": str(args.weights), "dataset": str(args.dataset), "max_frames": args.max_frames}
            if args.dump_embeddings is not None:
                args.dump_embeddings.parent.mkdir(parents=True, exist_ok=True)
                np.savez(args.dump_embeddings, embeddings=embeddings.astype(np.float32), subjects=subjects,
                         conditions=conditions, views=views, encoder=np.asarray(encoder.name))
                print(f"wrote {args.dump_embeddings}")
        report = evaluate_casia_b(embeddings, subjects, conditions, views, args.far)
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {**meta, "sequences": int(len(embeddings)), "subjects": sorted(set(subjects.tolist())), **report}
    rank1 = {name: ProbeSetResult(**values) for name, values in report["casia_b_rank1"].items()}
    print(f"encoder {encoder_name}: {len(embeddings)} sequences of {len(report['subjects'])} subjects")
    print(format_rank1_table(rank1))
    for key, label in (("retrieval", "Euclidean"), ("retrieval_part_cosine", "part cosine")):
        r = report[key]
        print(f"all probes vs gallery ({label}): Rank-1 {r['rank1']:.1f}  Rank-5 {r['rank5']:.1f}  "
              f"mAP {r['mAP']:.1f}  mINP {r['mINP']:.1f}")
    if args.open_set:
        open_set = report["open_set"]
        eer = open_set["equal_error_rate"]
        print(f"open set (part-normalised cosine distance): genuine mean {open_set['genuine']['mean']:.4g}, "
              f"impostor mean {open_set['impostor']['mean']:.4g}, "
              f"EER {100 * eer['rate']:.1f}% at distance {eer['threshold']:.4g}")
        for row in open_set["thresholds"]:
            print(f"  FAR {100 * row['far']:g}%: accept_distance {row['threshold']:.4g}  TAR {100 * row['tar']:.1f}%  "
                  f"unknown accepted {100 * row['unknown_accept_rate']:.1f}%")
    if args.json is not None:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
