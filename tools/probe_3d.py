"""Retrain only Mesh-Gait's 3D heatmap head on the synthetic set, all else frozen, and report its 3D errors.

A question about the 3D losses (plain or mirror-invariant, the head's learning rate) answered in minutes instead of
a three-hour run: the silhouette features stay those of WEIGHTS, so only what the head reads from them changes.

    python tools/probe_3d.py --weights W.pt --synthetic runs/synthetic --loss mirror --lr 1.0 --json out.json
    python tools/probe_3d.py --weights W.pt --synthetic runs/synthetic --loss plain --lr 1.0 --json plain.json
    python tools/probe_3d.py --weights W.pt --synthetic runs/synthetic --loss canonical --json canonical.json

Batches: 8 training-identity sequences of 25 frames from the training views, no augmentation, SGD (momentum 0.9)
at a constant --lr, the 3D loss weights of `engines.train.LossSection`. Scored on --sequences random held-out
sequences (30 frames each) with `engines.evaluation.reconstruction_errors`, before and after.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from engines.errors import EngineError
from engines.reports import write_report


def probe(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from engines.data.sampling import fixed_frame_indices
    from engines.data.sequences import CASIA_B_VIEWS
    from engines.data.synthetic import SyntheticGaitDataset, read_meta
    from engines.evaluation import reconstruction_errors, view_mean_poses
    from engines.gait.meshgait import MeshGait, mesh_losses
    from engines.gait.weights import load_gait_model
    from engines.train import LossSection, target_tensors

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model, info = load_gait_model(args.weights)
    if not isinstance(model, MeshGait):
        raise EngineError(f"{args.weights}: a {info['kind']} model has no 3D head to probe")
    if args.depth_context and not model.config.depth_context:  # the same network, its head given the context term
        trained = model.state_dict()
        model = MeshGait(model.config.model_copy(update={"depth_context": True}))
        missing = model.load_state_dict(trained, strict=False).missing_keys
        assert missing == ["heatmap_head.context_fc"], missing
        model.eval()
    meta = read_meta(args.synthetic)
    split = meta["split"]
    train_views = [view for view in CASIA_B_VIEWS if view in meta["views"] and view not in meta["held_out_views"]]
    train = SyntheticGaitDataset(args.synthetic, subjects=split["train"], views=train_views)
    test = SyntheticGaitDataset(args.synthetic, subjects=split["test"])
    rng = np.random.default_rng(args.seed)
    scored = rng.choice(len(test.keys), min(args.sequences, len(test.keys)), replace=False)
    baseline = view_mean_poses(SyntheticGaitDataset(args.synthetic, subjects=split["train"]), model.config.joints)

    def score() -> dict[str, object]:
        return reconstruction_errors(model, test, scored, test.held_out_views, max_frames=30, progress=False,
                                     baseline_poses=baseline)

    before = score()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head = model.heatmap_head
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    weight_of = LossSection().weights_3d()
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        indices = rng.choice(len(train.keys), 8, replace=False)
        frames, targets = [], []
        for index in indices.tolist():
            frame_idx = fixed_frame_indices(train.num_frames(index), 25, rng)
            frames.append(train.frames_at(index, frame_idx))
            targets.append(train.targets_at(index, frame_idx))
        model.eval()
        head.train()  # the head's BatchNorm learns; the frozen network keeps its statistics
        output = model(torch.from_numpy(np.stack(frames)).float().div_(255.0), with_3d=True)
        points, vertices, mirrored = target_tensors(targets, None if args.loss == "plain" else train.mirror,
                                                    canonical=args.loss == "canonical")
        losses = mesh_losses(output, points, vertices, mirrored=mirrored)
        loss = sum(weight_of[name] * value for name, value in losses.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} ({time.perf_counter() - started:.0f} s): "
                  + " ".join(f"{name} {float(value.detach()):.4f}" for name, value in losses.items()), flush=True)
    return {"weights": str(args.weights), "encoder": info["name"], "loss": args.loss, "lr": args.lr,
            "depth_context": args.depth_context,
            "steps": args.steps, "seed": args.seed, "sequences_scored": len(scored), "before": before,
            "after": score()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="Mesh-Gait .pt weights")
    parser.add_argument("--synthetic", type=Path, required=True, metavar="ROOT", help="tools/make_synthetic.py output")
    parser.add_argument("--loss", choices=("plain", "mirror", "canonical"), default="mirror",
                        help="mirror: each frame against the nearer of the body and its mirror image; canonical: "
                        "against the one a rule on the silhouette picks (`Targets3D.canonical`)")
    parser.add_argument("--depth-context", action="store_true",
                        help="give the head the walk's mean features for depth (`MeshGaitConfig.depth_context`)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1.0, help="constant SGD learning rate of the head")
    parser.add_argument("--sequences", type=int, default=40, help="held-out sequences scored before and after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the settings and both reports here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.lr <= 0 or args.sequences < 1:
        parser.error("--steps, --lr and --sequences must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = probe(args)
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for when in ("before", "after"):
        block = report[when]
        assert isinstance(block, dict)
        print(f"{when}: MPJPE {block['mpjpe_mm']['all']:.1f} mm, mirror-resolved "
              f"{block['mirror_resolved']['mpjpe_mm']['all']:.1f} mm (baseline, each view's mean pose: "
              f"{block['mirror_resolved']['baseline_mean_pose_per_view_mpjpe_mm']:.1f}); joint motion "
              f"{block['joint_motion_mm']['predicted']:.1f} mm, truly {block['joint_motion_mm']['truth']:.1f}")
    if args.json is not None:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
