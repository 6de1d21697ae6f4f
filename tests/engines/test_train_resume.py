"""Training on a handful of real CASIA-B subjects with a tiny network: resume is bit-exact, and broken
checkpoints or dataset paths fail with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from engines.errors import CheckpointError, ConfigFileError, DatasetError
from engines.gait.gaitbase import GaitBase, GaitBaseConfig
from engines.gait.weights import load_gait_model, save_weights
from engines.train import (
    OptimSection,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    load_checkpoint,
    load_train_config,
    park_run,
    read_train_tree,
    train,
    unpark_run,
)


def tiny_config(folder: Path, dataset: Path) -> TrainConfig:
    raw = {
        "name": "gaitbase-tiny-test",
        "run_dir": "run",
        "model": {"channels": [4, 8, 8, 16], "part_dim": 8},
        "data": {"root": str(dataset), "first_subject": 1, "last_subject": 4, "frames": 4, "p": 2, "k": 2,
                 "augment": {"rotate_prob": 0.5, "erasing_prob": 0.5}},
        "optim": {"lr": 0.05, "warmup_steps": 1, "total_steps": 4},
        "runtime": {"device": "cpu", "threads": 1, "seed": 3, "checkpoint_every_steps": 2, "keep_checkpoints": 4},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw))
    return load_train_config(folder / "tiny.yaml")


def losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(casia_b: Path) -> Path:
    return casia_b / "sils-64x64-bin"


def test_two_steps_resume_two_steps_equals_four_steps(tmp_path: Path, dataset: Path) -> None:
    straight = tiny_config(tmp_path / "straight", dataset)
    train(straight, progress=False)
    resumed = tiny_config(tmp_path / "resumed", dataset)
    first = train(resumed, stop_step=2, progress=False)
    assert first.step == 2 and first.weights is None
    second = train(resumed, resume=True, progress=False)
    assert second.step == 4 and second.weights is not None

    keys = ("step", "loss", "triplet", "ce", "lr")
    expected = [{k: r[k] for k in keys} for r in losses(straight.run_dir)]
    assert [{k: r[k] for k in keys} for r in losses(resumed.run_dir)] == expected
    assert len(expected) == 4
    a = load_checkpoint(latest_checkpoint(straight.run_dir))["model"]
    b = load_checkpoint(latest_checkpoint(resumed.run_dir))["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    model, info = load_gait_model(latest_checkpoint(resumed.run_dir))
    assert info["name"].startswith("gaitbase-tiny-test@") and model.config.parts == 16


def test_a_parked_run_continues_on_a_fresh_machine(tmp_path: Path, dataset: Path) -> None:
    """Park after 2 steps, drop the run folder, unpark into a new one: the 4 steps equal an unbroken run's."""
    straight = tiny_config(tmp_path / "straight", dataset)
    train(straight, progress=False)
    first = tiny_config(tmp_path / "first", dataset)
    train(first, stop_step=2, progress=False)
    parked = park_run(first, tmp_path / "parked")
    assert parked == tmp_path / "parked" / "run" / "step_0000002.pt"
    assert len(losses(parked.parent)) == 2

    fresh = tiny_config(tmp_path / "fresh", dataset)
    assert unpark_run(fresh, tmp_path / "parked") == fresh.run_dir / "checkpoints" / "step_0000002.pt"
    train(fresh, resume=True, progress=False)
    keys = ("step", "loss", "triplet", "ce", "lr")
    assert [{k: r[k] for k in keys} for r in losses(fresh.run_dir)] == [
        {k: r[k] for k in keys} for r in losses(straight.run_dir)]
    assert unpark_run(fresh, tmp_path / "parked") is None  # the run is ahead of its parking: left alone
    assert park_run(fresh, tmp_path / "parked").name == "step_0000004.pt"
    assert sorted(p.name for p in (tmp_path / "parked" / "run").iterdir()) == ["losses.jsonl", "step_0000004.pt"]


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_only_where_the_cpu_runs_it_natively(tmp_path: Path, dataset: Path, native: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path, dataset)
    config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"cpu_bf16": True})})
    monkeypatch.setattr("engines.train.cpu_has_fast_bf16", lambda: native)
    assert Trainer(config).use_cpu_bf16 is native


def test_parking_a_run_without_checkpoints_is_a_clear_error(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint to park"):
        park_run(tiny_config(tmp_path, dataset), tmp_path / "parked")


def test_weights_written_at_the_end_of_training_load(tmp_path: Path, dataset: Path) -> None:
    """The release weights must load with `weights_only=True` (their metadata must hold plain types only)."""
    config = tiny_config(tmp_path, dataset).model_copy(update={"optim": OptimSection(lr=0.05, total_steps=1)})
    result = train(config, progress=False)
    model, info = load_gait_model(result.weights)
    assert info["name"].startswith("gaitbase-tiny-test@") and model.config.parts == 16


def test_a_fine_tune_starts_from_the_given_weights(tmp_path: Path, dataset: Path) -> None:
    """`init_weights`: the first step starts from those parameters; another network is refused by name."""
    config = tiny_config(tmp_path / "first", dataset).model_copy(update={"optim": OptimSection(lr=0.05, total_steps=1)})
    trained = train(config, progress=False).weights
    fine_tune = tiny_config(tmp_path / "second", dataset).model_copy(update={"init_weights": trained})
    start = Trainer(fine_tune).model.state_dict()
    expected, _ = load_gait_model(trained)
    assert all(torch.equal(start[key], value) for key, value in expected.state_dict().items())
    other = GaitBase(GaitBaseConfig(channels=(4, 8, 8, 32), part_dim=8))
    save_weights(other, tmp_path / "other.pt", name="other", metadata={})
    with pytest.raises(CheckpointError, match="other.pt: init_weights is a gaitbase with config"):
        Trainer(fine_tune.model_copy(update={"init_weights": tmp_path / "other.pt"}))


def test_a_fine_tune_that_adds_identities_keeps_the_trained_classes(tmp_path: Path, dataset: Path) -> None:
    """More subjects than the weights were trained on: every parameter is taken, the old classes' weights included
    (they keep their labels), and only the added classes start fresh; fewer classes than the weights is refused."""
    config = tiny_config(tmp_path / "first", dataset).model_copy(update={"optim": OptimSection(lr=0.05, total_steps=1)})
    trained = train(config, progress=False).weights
    wider = tiny_config(tmp_path / "second", dataset)
    wider = wider.model_copy(update={"init_weights": trained,
                                     "data": wider.data.model_copy(update={"last_subject": 6})})
    model = Trainer(wider).model
    expected, _ = load_gait_model(trained)
    assert (expected.config.num_classes, model.config.num_classes) == (4, 6)
    start, old = model.state_dict(), expected.state_dict()
    assert all(torch.equal(start[key], value) for key, value in old.items() if key != "bn_necks.fc_bin")
    assert torch.equal(start["bn_necks.fc_bin"][..., :4], old["bn_necks.fc_bin"])
    assert start["bn_necks.fc_bin"][..., 4:].abs().sum() > 0
    narrower = tiny_config(tmp_path / "third", dataset)
    narrower = narrower.model_copy(update={"data": narrower.data.model_copy(update={"last_subject": 3}),
                                           "init_weights": trained})
    with pytest.raises(CheckpointError, match="init_weights is a gaitbase with config"):
        Trainer(narrower)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, dataset: Path) -> None:
    config = tiny_config(tmp_path, dataset)
    train(config, stop_step=2, progress=False)
    checkpoint = latest_checkpoint(config.run_dir)
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # a write cut short
    with pytest.raises(CheckpointError, match=rf"{checkpoint.name}: not a readable torch file"):
        train(config, resume=True, progress=False)
    checkpoint.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        Trainer(config).resume(checkpoint)


def test_weights_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    save_weights(GaitBase(GaitBaseConfig(channels=(4, 8, 8, 16), part_dim=8)), tmp_path / "w.pt", name="w",
                 metadata={})
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "w.pt")


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, tmp_path / "no-such-dataset")
    with pytest.raises(DatasetError, match="no-such-dataset: dataset path does not exist"):
        Trainer(config)


TRAIN_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


@pytest.mark.parametrize("path", sorted(TRAIN_CONFIGS.glob("**/*.yaml")),
                         ids=lambda path: str(path.relative_to(TRAIN_CONFIGS)))
def test_committed_training_configs_validate(path: Path) -> None:
    config = load_train_config(path)
    assert config.optim.total_steps > 0 and config.run_dir.is_absolute()
    if config.branch_3d is not None:  # Mesh-Gait runs name what they do with the mirror ambiguity, not a default
        assert "mirror_invariant_3d" in read_train_tree(path)["loss"]


def test_an_arm_states_only_how_it_differs_from_the_config_it_extends(tmp_path: Path, dataset: Path) -> None:
    control = tiny_config(tmp_path / "control", dataset)
    arm_folder = tmp_path / "arms"
    arm_folder.mkdir()
    (arm_folder / "arm.yaml").write_text("extends: ../control/tiny.yaml\nname: gaitbase-tiny-arm\nrun_dir: arm\n"
                                         "optim: {lr: 0.01}\nruntime: {seed: 4}\n")
    arm = load_train_config(arm_folder / "arm.yaml")
    assert (arm.name, arm.optim.lr, arm.runtime.seed) == ("gaitbase-tiny-arm", 0.01, 4)
    # the rest of each section is the control's, and each path means what it meant in the file that wrote it
    assert arm.optim.total_steps == control.optim.total_steps and arm.runtime.threads == control.runtime.threads
    assert arm.data == control.data and arm.run_dir.resolve() == (arm_folder / "arm").resolve()
    (tmp_path / "control" / "tiny.yaml").write_text("extends: ../arms/arm.yaml\n")
    with pytest.raises(ConfigFileError, match="makes a loop"):
        load_train_config(arm_folder / "arm.yaml")
