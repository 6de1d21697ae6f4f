"""Mesh-Gait: the factorised 3D heatmaps decode where they peak, inference runs only the embedding path, and
training on real CASIA-B mixed with a (tiny, real-rendered) synthetic set learns 3D, resumes bit-exactly and
feeds `tools/eval.py --synthetic`."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from engines.data.synthetic import SyntheticGaitDataset
from engines.gait.encoder import open_encoder
from engines.gait.gaitbase import EncoderOutput
from engines.gait.meshgait import Heatmaps3D, MeshGait, MeshGaitConfig, mesh_losses, soft_argmax_3d
from engines.gait.weights import load_gait_model
from engines.train import load_train_config, train
from tools import eval as eval_tool

TINY = MeshGaitConfig(channels=(4, 8, 8, 16), part_dim=8, num_classes=5, vertices=30, depth_bins=4,
                      heatmap_channels=8)


def test_soft_argmax_decodes_the_peak_of_each_factor() -> None:
    maps = torch.zeros(1, 2, 16, 11)
    maps[0, 0, 0, 0] = 1.0  # top-left cell: the head of the frame
    maps[0, 1, 15, 5] = 1.0  # bottom row, middle column: a foot under the centre of mass
    depth = torch.zeros(1, 2, 4)
    depth[0, 0, 0] = 1.0
    depth[0, 1, 1:3] = 0.5  # halfway between two depth cells
    points = soft_argmax_3d(Heatmaps3D(maps_2d=maps, depth=depth))[0]
    torch.testing.assert_close(points[0], torch.tensor([-21.5 / 32, -1.0, -1.0]))
    torch.testing.assert_close(points[1], torch.tensor([0.0, 1.0, 0.0]))


def test_inference_runs_only_the_embedding_path() -> None:
    torch.manual_seed(0)
    model = MeshGait(TINY)
    silhouettes = torch.rand(3, 7, 64, 44)
    model.train()
    trained = model(silhouettes, decode_3d_for=slice(1, 3))
    assert trained.embeddings.shape == (3, 16, 8) and trained.logits.shape == (3, 16, 5)
    assert trained.joints_3d.shape == (2, 7, 24, 3) and trained.markers_3d.shape == (2, 7, 64, 3)
    assert trained.vertices_3d.shape == (2, 7, 30, 3) and trained.joints_from_mesh.shape == (2, 7, 24, 3)
    model.eval()
    with torch.no_grad():
        inferred = model(silhouettes)
    assert inferred.joints_3d is None and inferred.vertices_3d is None
    # Temporal max pooling: one frame more or less changes the window, not the embedding layout.
    with torch.no_grad():
        assert model(silhouettes[:, :3]).embeddings.shape == (3, 16, 8)


def test_identity_losses_can_leave_the_3d_head_to_the_3d_losses() -> None:
    """`heatmaps_from_3d_only`: the same embeddings, but an identity loss gives the heatmap head no gradient while
    the heatmap encoder still gets one; a 3D loss still trains the head."""
    torch.manual_seed(0)
    model = MeshGait(TINY).train()
    silhouettes = torch.rand(2, 5, 64, 44)
    embeddings = []
    for only_3d in (False, True):
        model.zero_grad()
        output = model(silhouettes, decode_3d_for=slice(0, 2), heatmaps_from_3d_only=only_3d)
        embeddings.append(output.embeddings.detach())
        output.embeddings.square().sum().backward(retain_graph=True)
        head = model.heatmap_head.heatmap_logits.weight.grad
        assert (head is None or not head.any()) == only_3d
        assert next(model.heatmap_encoder.parameters()).grad.any()
        model.zero_grad()
        output.joints_3d.square().sum().backward()
        assert model.heatmap_head.heatmap_logits.weight.grad.any()
    torch.testing.assert_close(embeddings[0], embeddings[1])


def test_depth_context_starts_as_the_head_without_it_and_reads_each_walk() -> None:
    """Zero-initialised, the context term changes nothing; once learnt, every frame of a walk gets its walk's
    context and another walk in the batch does not leak into it."""
    torch.manual_seed(0)
    plain = MeshGait(TINY).eval()
    with_context = MeshGait(TINY.model_copy(update={"depth_context": True})).eval()
    assert with_context.load_state_dict(plain.state_dict(), strict=False).missing_keys == ["heatmap_head.context_fc"]
    walks = torch.rand(2, 5, 64, 44)
    torch.testing.assert_close(with_context(walks, with_3d=True).joints_3d, plain(walks, with_3d=True).joints_3d)
    with torch.no_grad():
        with_context.heatmap_head.context_fc.normal_()
    first = with_context(walks, with_3d=True).joints_3d[0]
    other = torch.cat((walks[:1], torch.rand(1, 5, 64, 44)))
    torch.testing.assert_close(with_context(other, with_3d=True).joints_3d[0], first)
    assert not torch.allclose(first[..., 2], plain(walks, with_3d=True).joints_3d[0, ..., 2])


def test_body_model_matrices_must_fit_the_config() -> None:
    model = MeshGait(TINY)
    with pytest.raises(ValueError, match="do not fit"):
        model.set_body_model(torch.zeros(31, 64), torch.zeros(24, 31))


def test_mirror_invariant_loss_accepts_either_body_frame_by_frame() -> None:
    generator = torch.Generator().manual_seed(0)
    points, vertices = torch.randn(2, 3, 24 + 64, 3, generator=generator), torch.randn(2, 3, 30, 3, generator=generator)
    twin = (torch.randn(2, 3, 24 + 64, 3, generator=generator), torch.randn(2, 3, 30, 3, generator=generator))
    first_frame = torch.zeros(2, 3, 1, 1, dtype=torch.bool)
    first_frame[:, 0] = True
    decoded_points = torch.where(first_frame, twin[0], points)  # frame 0 decodes the twin, frames 1-2 the body
    decoded_vertices = torch.where(first_frame, twin[1], vertices)
    output = EncoderOutput(embeddings=torch.zeros(2, 8, 1))
    output.joints_3d, output.markers_3d = decoded_points[:, :, :24], decoded_points[:, :, 24:]
    output.vertices_3d, output.joints_from_mesh = decoded_vertices, decoded_points[:, :, :24]
    invariant = mesh_losses(output, points, vertices, mirrored=twin)
    assert all(float(value) == 0.0 for value in invariant.values()), invariant
    plain = mesh_losses(output, points, vertices)
    assert all(float(value) > 0.1 for value in plain.values()), plain


def _config(folder: Path, casia_b: Path, synthetic: Path, steps: int = 4) -> Path:
    raw = {
        "name": "meshgait-tiny-test",
        "run_dir": "run",
        "model": {"channels": [4, 8, 8, 16], "part_dim": 8},
        "branch_3d": {"depth_bins": 4, "heatmap_channels": 8},
        "data": {"root": str(casia_b / "sils-64x64-bin"), "first_subject": 1, "last_subject": 3, "frames": 4,
                 "p": 2, "k": 2},
        "synthetic": {"root": str(synthetic), "first_subject": 1, "last_subject": 2, "exclude_views": ["018"],
                      "p": 2, "k": 2},
        "optim": {"lr": 0.05, "warmup_steps": 1, "total_steps": steps},
        "runtime": {"device": "cpu", "threads": 1, "seed": 5, "checkpoint_every_steps": 2, "keep_checkpoints": 4},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw))
    return folder / "tiny.yaml"


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, casia_b: Path, synthetic_root: Path) -> Path:
    """A tiny Mesh-Gait trained 4 steps straight; returns its run folder."""
    config = load_train_config(_config(tmp_path_factory.mktemp("straight"), casia_b, synthetic_root))
    result = train(config, progress=False)
    assert result.weights is not None
    return result.run_dir


def test_training_mixes_real_and_synthetic_and_resumes_bit_exactly(trained: Path, tmp_path: Path, casia_b: Path,
                                                                  synthetic_root: Path) -> None:
    config = load_train_config(_config(tmp_path, casia_b, synthetic_root))
    train(config, stop_step=2, progress=False)
    train(config, resume=True, progress=False)
    straight, resumed = _losses(trained), _losses(config.run_dir)
    assert [r["step"] for r in straight] == [1, 2, 3, 4]
    three_d = ("l1_joints", "l1_markers", "l1_vertices", "l1_joints_from_mesh", "l1_reprojection")
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "triplet", "ce", *three_d):
            assert a[key] == b[key], (a["step"], key)
        assert all(0.0 < a[key] < 2.0 for key in three_d), a  # real 3D supervision, in half body heights


def test_weights_run_through_the_encoder_and_the_3d_evaluation(trained: Path, synthetic_root: Path,
                                                               tmp_path: Path) -> None:
    model, info = load_gait_model(trained / "weights.pt")
    assert isinstance(model, MeshGait) and info["kind"] == "meshgait"
    dataset = SyntheticGaitDataset(synthetic_root)
    torch.testing.assert_close(model.marker_interpolation, torch.from_numpy(dataset.marker_interpolation),
                               atol=1e-3, rtol=1e-2)  # fp16 release weights
    encoder = open_encoder(trained / "weights.pt", backend="torch", device="cpu", threads=1)
    assert encoder.encode(np.zeros((2, 5, 64, 44), np.uint8)).shape == (2, 16 * 8)

    report_path = tmp_path / "3d.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = eval_tool.main(["--weights", str(trained / "weights.pt"), "--synthetic", str(synthetic_root),
                               "--json", str(report_path), "--no-progress", "--threads", "1"])
    assert code == 0, stdout.getvalue()
    report = json.loads(report_path.read_text())
    assert report["subjects"] == dataset.test_subjects
    assert report["held_out_views"] == ["036", "144"]
    for key in ("mpjpe_mm", "marker_error_mm", "mpve_mm"):
        assert math.isfinite(report[key]["all"]) and 1.0 < report[key]["all"] < 2000.0, report[key]
    assert 1.0 < report["baseline_mean_pose_per_view_mpjpe_mm"] < report["mpjpe_mm"]["all"]  # untrained: worse
    assert report["joint_motion_mm"]["truth"] > 10.0 and report["joint_motion_mm"]["predicted"] >= 0.0
    resolved = report["mirror_resolved"]
    assert resolved["mpjpe_mm"]["all"] <= report["mpjpe_mm"]["all"]  # the body is chosen per frame by MPJPE
    assert all(math.isfinite(resolved[key]["all"]) for key in ("marker_error_mm", "mpve_mm"))
    assert resolved["baseline_mean_pose_per_view_mpjpe_mm"] <= report["baseline_mean_pose_per_view_mpjpe_mm"]
    assert 0.0 <= resolved["mirror_chosen_fraction"] <= 1.0
    assert "MPJPE (24 joints)" in stdout.getvalue() and "mean training pose" in stdout.getvalue()
    assert "MPJPE (24 joints), mirror-resolved" in stdout.getvalue()


def test_3d_head_learning_rate_factor_makes_a_second_group(tmp_path: Path, casia_b: Path,
                                                            synthetic_root: Path) -> None:
    from engines.train import Trainer

    path = _config(tmp_path, casia_b, synthetic_root)
    raw = yaml.safe_load(path.read_text())
    trainer = Trainer(load_train_config(path))
    assert len(trainer.optimizer.param_groups) == 1  # factor 1: the layout older checkpoints have
    raw["optim"]["lr_factor_3d"] = 10.0
    path.write_text(yaml.safe_dump(raw))
    trainer = Trainer(load_train_config(path))
    base, head = trainer.optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in trainer.model.heatmap_head.parameters()}
    assert head["lr"] == pytest.approx(10 * base["lr"])
    assert len(base["params"]) + len(head["params"]) == len(list(trainer.model.parameters()))


def test_a_gaitbase_starts_a_mesh_gait_that_embeds_as_it_does(tmp_path: Path, casia_b: Path,
                                                              synthetic_root: Path) -> None:
    """`init_weights` of a GaitBase: its parameters fill the silhouette branch and the fusion starts closed, so the
    Mesh-Gait's first embeddings are the GaitBase's; a GaitBase of another width is refused."""
    from engines.errors import CheckpointError
    from engines.gait.gaitbase import GaitBase, GaitBaseConfig
    from engines.gait.weights import save_weights
    from engines.train import Trainer

    torch.manual_seed(1)
    gaitbase = GaitBase(GaitBaseConfig(channels=(4, 8, 8, 16), part_dim=8, num_classes=5))  # 3 CASIA-B + 2 synthetic
    save_weights(gaitbase, tmp_path / "gaitbase.pt", name="gaitbase-tiny", metadata={})
    path = _config(tmp_path, casia_b, synthetic_root)
    raw = yaml.safe_load(path.read_text())
    raw["init_weights"] = str(tmp_path / "gaitbase.pt")
    path.write_text(yaml.safe_dump(raw))
    model = Trainer(load_train_config(path)).model.float().eval()
    started, _ = load_gait_model(tmp_path / "gaitbase.pt")
    silhouettes = torch.rand(2, 6, 64, 44)
    with torch.no_grad():
        expected = started.float().eval()(silhouettes).inference_embeddings
        got = model(silhouettes).inference_embeddings
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    wider = GaitBase(GaitBaseConfig(channels=(4, 8, 8, 32), part_dim=8, num_classes=5))
    save_weights(wider, tmp_path / "wider.pt", name="wider", metadata={})
    raw["init_weights"] = str(tmp_path / "wider.pt")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CheckpointError, match="wider.pt: init_weights is a gaitbase with config"):
        Trainer(load_train_config(path))


def test_probe_retrains_only_the_3d_head(trained: Path, synthetic_root: Path, tmp_path: Path) -> None:
    from tools import probe_3d

    before = load_gait_model(trained / "weights.pt")[0].state_dict()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = probe_3d.main(["--weights", str(trained / "weights.pt"), "--synthetic", str(synthetic_root),
                              "--steps", "2", "--sequences", "2", "--threads", "1", "--json", str(tmp_path / "p.json")])
    assert code == 0, stdout.getvalue()
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["loss"] == "mirror" and report["steps"] == 2 and report["sequences_scored"] == 2
    assert report["before"]["mpjpe_mm"] != report["after"]["mpjpe_mm"]  # the head learnt something
    after = load_gait_model(trained / "weights.pt")[0].state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # the weights file is left as it was
    assert "mirror-resolved" in stdout.getvalue()


def test_3d_evaluation_of_a_gaitbase_is_a_clear_error(synthetic_root: Path, tmp_path: Path) -> None:
    from engines.gait.gaitbase import GaitBase, GaitBaseConfig
    from engines.gait.weights import save_weights

    save_weights(GaitBase(GaitBaseConfig(channels=(4, 8, 8, 16), part_dim=8, num_classes=4)), tmp_path / "g.pt",
                 name="gaitbase-tiny", metadata={})
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = eval_tool.main(["--weights", str(tmp_path / "g.pt"), "--synthetic", str(synthetic_root)])
    assert code == 2 and "has no 3D branch" in stderr.getvalue()
