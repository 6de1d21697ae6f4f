"""Training GaitBase or Mesh-Gait on silhouette sequences: config, batches, losses, checkpoints with bit-exact resume.

A run is a function of its YAML config: P x K batches of fixed-length random frame sets (OpenGait's
`TripletSampler` + "fixed_unordered"), triplet + cross-entropy losses, SGD or AdamW with linear warm-up and cosine
or multi-step decay. A `branch_3d` section makes the network Mesh-Gait (`engines/gait/meshgait.py`); a `synthetic`
section adds a second P x K batch per step from the synthetic 3D gait set (`engines/data/synthetic.py`): its
identities join the identity losses (their labels follow the real ones) and, for Mesh-Gait, its ground truth
supervises the decoded joints, virtual markers, mesh and their 2D projections.

Each step's randomness (batch, frames, augmentations) comes from a generator seeded with `(seed, step)`, and
checkpoints hold model, optimiser, scheduler, grad-scaler and torch RNG states, so "N steps" and "N/2 steps,
resume, N/2 steps" produce the same losses.

Outputs under the run folder: `checkpoints/step_XXXXXXX.pt`, `losses.jsonl` (one JSON object per step: step,
losses, lr, seconds/step) and `weights.pt` (fp16 release weights) at the end. `park_run` / `unpark_run` carry a
run's newest checkpoint across fresh machines through a committed folder (`weights/parked/`).

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from tqdm import tqdm

from engines.data.augment import AugmentConfig, augment_sequence_flipped
from engines.data.sampling import PKBatchSampler, fixed_frame_indices
from engines.data.sequences import CASIA_B_VIEWS, open_dataset
from engines.errors import CheckpointError, ConfigFileError, EngineError
from engines.gait.gaitbase import GaitBase, GaitBaseArchitecture, GaitBaseConfig
from engines.gait.losses import cross_entropy_loss, triplet_loss
from engines.gait.meshgait import MeshGait, MeshGaitConfig, mesh_losses
from engines.gait.weights import (
    CHECKPOINT_FORMAT,
    atomic_torch_save,
    build_model,
    load_gait_model,
    model_kind,
    read_torch_file,
    save_weights,
)

if TYPE_CHECKING:  # the synthetic set (and smplx) is imported only by runs that use it
    from engines.data.synthetic import MirrorMap, Targets3D

log = logging.getLogger(__name__)

_CHECKPOINT_NAME = re.compile(r"^step_(\d{7})\.pt$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    root: Path = Field(description="CASIA-B npz folder or OpenGait pkl tree; relative to the config file")
    first_subject: int = Field(1, ge=1, description="first training subject id (CASIA-B: 001)")
    last_subject: int = Field(74, ge=1, description="last training subject id (CASIA-B: 074)")
    frames: int = Field(30, gt=0, description="frames drawn per training sequence (OpenGait frames_num_fixed)")
    p: int = Field(8, ge=2, description="identities per batch")
    k: int = Field(8, ge=2, description="sequences per identity per batch")
    augment: AugmentConfig = AugmentConfig()
    walk_direction: Literal["right_to_left", "left_to_right"] | None = Field(
        "right_to_left", description="which way the training walkers cross the image before any flip (CASIA-B: "
        "right to left); recorded in the weights so the pipeline mirrors walks to it (stages.gait)")


class Branch3DSection(_Section):
    """Present: the network is Mesh-Gait, with `model` as its 2D branch. Sizes as in `MeshGaitConfig`."""

    depth_bins: int = Field(8, gt=1, description="depth cells of each point's heatmap volume")
    heatmap_channels: int = Field(32, gt=0, description="width of the heatmap encoder")
    depth_context: bool = Field(False, description="each point's depth also reads the walk's mean head features "
                                "(`engines.gait.meshgait.HeatmapHead3D`)")


class SyntheticSection(_Section):
    """Synthetic sequences with 3D ground truth (`tools/make_synthetic.py`), one extra P x K batch per step."""

    root: Path = Field(description="synthetic dataset folder (holds sils-64x64-bin/, targets/); relative to the config")
    first_subject: int = Field(1, ge=1, description="first training identity of the synthetic set")
    last_subject: int = Field(80, ge=1, description="last training identity; later ones are held out for evaluation")
    exclude_views: tuple[str, ...] = Field(("036", "144"), description="views held out for the 3D evaluation")
    p: int = Field(4, ge=2, description="synthetic identities per batch")
    k: int = Field(4, ge=2, description="sequences per synthetic identity per batch")
    augment: AugmentConfig | None = Field(None, description="augmentations of the synthetic sequences; None: the "
                                          "real data's. They move pixels, not the 3D targets, so keep them off when "
                                          "the 3D fit matters")


class OptimSection(_Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate, reached at the end of the warm-up")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from lr/100 to lr")
    schedule: Literal["cosine", "multistep"] = "cosine"
    milestones: tuple[int, ...] = Field((), description="multistep: steps where the lr is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, le=1)
    total_steps: int = Field(gt=0, description="planned length of the run; the schedule ends here")
    lr_factor_3d: float = Field(1.0, gt=0, description="Mesh-Gait: learning-rate multiplier of the 3D heatmap head, "
                                "whose soft-argmax L1 losses send it small gradients (tools/probe_3d.py)")


class LossSection(_Section):
    triplet_margin: float = Field(0.2, ge=0)
    triplet_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    ce_scale: float = Field(16.0, gt=0, description="multiplier of the BNNeck cosine logits")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # 3D losses (Mesh-Gait), L1 in the normalised frame where 1 = half the body's height, so a good fit is O(0.05).
    # Virtual Markers weighs markers 100 : joints-from-mesh 0.1 : vertices 0.1 on millimetre-scale errors; on our
    # unit scale we keep markers and joints at 1 and the mesh terms at half, which keeps the identity losses
    # (O(1)) dominant once the 3D fit has converged.
    joints_3d: float = Field(1.0, ge=0, description="decoded SMPL joints")
    markers_3d: float = Field(1.0, ge=0, description="decoded virtual markers")
    vertices_3d: float = Field(0.5, ge=0, description="mesh vertices interpolated from the markers")
    joints_from_mesh: float = Field(0.5, ge=0, description="joints regressed from the mesh")
    reprojection: float = Field(0.5, ge=0, description="image-plane (x, y) of the joints")
    mirror_invariant_3d: bool = Field(True, description="compare each frame with the nearer of the body and its "
                                      "mirror image, which the silhouette cannot tell apart (`mesh_losses`)")
    mirror_rule_3d: Literal["nearer", "canonical"] = Field(
        "nearer", description="with mirror_invariant_3d, which of the two each frame is compared with: the nearer "
        "to the head's guess (`mesh_losses`), or the one a rule on the silhouette alone picks (`Targets3D.canonical`: "
        "facing the camera where the body is turned, otherwise the left leg on the image's right)")
    identity_into_3d_head: bool = Field(
        True, description="false: the identity losses do not train the 3D heatmap head (it learns from the 3D losses "
        "alone, as in tools/probe_3d.py, where it reconstructs; joint training at the head's high learning rate let "
        "the identity gradients flatten it to one pose); its heatmaps still feed the identity features")

    def weights_3d(self) -> dict[str, float]:
        """The 3D loss weights by the names `mesh_losses` returns."""
        return {"joints": self.joints_3d, "markers": self.markers_3d, "vertices": self.vertices_3d,
                "joints_from_mesh": self.joints_from_mesh, "reprojection": self.reprojection}


class RuntimeSection(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_bf16: bool = Field(False, description="bfloat16 autocast on CPU where the CPU runs it natively, else "
                                              "float32 (CUDA always uses fp16 autocast)")
    channels_last: bool = Field(False, description="NHWC memory format for the convolutions")
    threads: int = Field(2, gt=0, description="torch intra-op threads")
    seed: int = 0
    checkpoint_every_steps: int = Field(250, gt=0)
    keep_checkpoints: int = Field(3, gt=0, description="newest checkpoints kept; older ones are deleted")


class TrainConfig(_Section):
    name: str = Field(description="run and model name, e.g. gaitbase-compact-casiab")
    run_dir: Path = Field(description="outputs folder; relative to the config file")
    init_weights: Path | None = Field(None, description="a fine-tune: start from these weights' parameters (a "
                                      "weights file of the same architecture and classes) instead of a random "
                                      "initialisation; optimiser and schedule start fresh. Relative to the config file")
    model: GaitBaseArchitecture
    branch_3d: Branch3DSection | None = None
    data: DataSection
    synthetic: SyntheticSection | None = None
    optim: OptimSection
    loss: LossSection = LossSection()
    runtime: RuntimeSection = RuntimeSection()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.data.last_subject < self.data.first_subject:
            raise ValueError("data.last_subject must be >= data.first_subject")
        if self.optim.schedule == "multistep" and not self.optim.milestones:
            raise ValueError("optim.milestones must be given when optim.schedule is multistep")
        if self.branch_3d is not None and self.synthetic is None:
            raise ValueError("branch_3d (Mesh-Gait) needs a synthetic section: its 3D heads learn from synthetic data")
        if self.synthetic is not None and self.synthetic.last_subject < self.synthetic.first_subject:
            raise ValueError("synthetic.last_subject must be >= synthetic.first_subject")
        return self


_PATH_KEYS = (("run_dir",), ("init_weights",), ("data", "root"), ("synthetic", "root"))
"""Where a training config holds paths; each is relative to the file that writes it."""


def read_train_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One training YAML with its `extends: OTHER.yaml` chain merged in, section by section (the extending file's
    values win), every path made absolute against the folder of the file that wrote it. `extends` lets an ablation
    arm state only how it differs from the run it is compared with."""
    here = path.resolve()
    if here in seen:
        raise ConfigFileError(f"{seen[0]}: extends: {here} makes a loop")
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: cannot read YAML ({exc})") from exc
    if not isinstance(tree, dict):
        raise ConfigFileError(f"{path}: expected a mapping at the top level")
    for key_path in _PATH_KEYS:
        node = tree
        for part in key_path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key_path[-1]), str):
            node[key_path[-1]] = str(here.parent / node[key_path[-1]])
    if "extends" not in tree:
        return tree
    return _merged(read_train_tree(here.parent / str(tree.pop("extends")), (*seen, here)), tree)


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; a section in both is merged key by key, anything else in `top` replaces. The same rule as
    pipeline.config.merge_trees, which engines may not import (docs/DESIGN.md, layers)."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if both_sections else value
    return merged


def load_train_config(path: Path) -> TrainConfig:
    """Parse and validate a training YAML (and the file it `extends`, if any); relative paths resolve against the
    folder of the file that writes them.

    Raises `ConfigFileError` naming the file, the key path and the rule, e.g.
    `configs/train/x.yaml: optim.lr: Input should be greater than 0 (got -1)`.
    """
    path = Path(path)
    try:
        return TrainConfig.model_validate(read_train_tree(path))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{key}: {message} (got {error.get('input')!r})")
        raise ConfigFileError(f"{path}: " + "; ".join(problems)) from exc


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without CUDA is an error, never a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' requested but torch.cuda.is_available() is False; use device: cpu or auto")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 and up). Without it (AVX2 only) bfloat16 autocast
    falls back to reference kernels: a compact GaitBase step took 90 s against 15.5 s in float32 on a 2-core EPYC."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


def lr_factor(step: int, optim: OptimSection) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up, then cosine to 0 or multi-step decay."""
    if step < optim.warmup_steps:
        return 0.01 + 0.99 * step / optim.warmup_steps
    if optim.schedule == "multistep":
        return optim.gamma ** sum(step >= m for m in optim.milestones)
    span = max(1, optim.total_steps - optim.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - optim.warmup_steps) / span)))


@dataclass(frozen=True)
class TrainResult:
    """Where a run left off."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    weights: Path | None


def target_tensors(targets: list[Targets3D], mirror: MirrorMap | None, device: torch.device | str = "cpu",
                   canonical: bool = False,
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Sequences' 3D targets as `mesh_losses` takes them: points, vertices and, with `mirror`, the mirror body's,
    or with `mirror` and `canonical` each frame's canonical one of the two (`Targets3D.canonical`) and no mirror."""
    if mirror is not None and canonical:
        targets, mirror = [truth.canonical(mirror) for truth in targets], None

    def stacked(bodies: list[Targets3D]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.stack([t.points for t in bodies])).to(device),
                torch.from_numpy(np.stack([t.vertices for t in bodies])).to(device))

    points, vertices = stacked(targets)
    return points, vertices, None if mirror is None else stacked([t.mirrored(mirror) for t in targets])


def parameter_groups(model: nn.Module, optim: OptimSection) -> list[dict[str, Any]]:
    """One group at the base learning rate, plus Mesh-Gait's 3D heatmap head at `lr_factor_3d` times it if set.

    A single group when the factor is 1, so checkpoints of runs without the factor keep their optimiser layout.
    """
    head = model.heatmap_head if isinstance(model, MeshGait) and optim.lr_factor_3d != 1.0 else None
    if head is None:
        return [{"params": list(model.parameters())}]
    in_head = {id(p) for p in head.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in in_head]},
            {"params": list(head.parameters()), "lr": optim.lr * optim.lr_factor_3d}]


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def latest_checkpoint(run_dir: Path, folder: str = "checkpoints") -> Path | None:
    """The checkpoint with the highest step in `run_dir/<folder>`, or None when there is none."""
    directory = Path(run_dir) / folder
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.glob("step_*.pt") if _CHECKPOINT_NAME.match(p.name))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint's dict; `CheckpointError` with path and reason when it is corrupt or not one."""
    data = read_torch_file(path)
    missing = {"step", "model", "optimizer", "scheduler", "torch_rng", "model_config"} - set(data)
    if data.get("format") != CHECKPOINT_FORMAT or missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {sorted(missing) or ['format']})")
    return data


@dataclass(frozen=True)
class Batch:
    """One step's inputs: real sequences first, then synthetic ones (which alone carry 3D targets)."""

    silhouettes: torch.Tensor  # (N, frames, 64, 44) float in [0, 1]
    labels: torch.Tensor  # (N,) int64; synthetic identities follow the real ones
    synthetic_from: int  # index of the first synthetic sequence (N when there is none)
    points: torch.Tensor | None = None  # (N - synthetic_from, frames, joints + markers, 3), normalised frame
    vertices: torch.Tensor | None = None  # (N - synthetic_from, frames, V, 3)
    mirrored: tuple[torch.Tensor, torch.Tensor] | None = None  # the mirror body's (points, vertices)


class Trainer:
    """Owns the model, optimiser and data of one run; `run()` trains from the current step to a stop step."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        runtime = config.runtime
        torch.set_num_threads(runtime.threads)
        self.device = resolve_device(runtime.device)
        subjects = [f"{i:03d}" for i in range(config.data.first_subject, config.data.last_subject + 1)]
        self.dataset = open_dataset(config.data.root, subjects)
        self.labels, num_classes = _labels(self.dataset.keys, offset=0)
        self.sampler = PKBatchSampler(self.labels, config.data.p, config.data.k)
        self.synthetic = None
        if config.synthetic is not None:
            from engines.data.synthetic import SyntheticGaitDataset

            section = config.synthetic
            synthetic_subjects = [f"{i:03d}" for i in range(section.first_subject, section.last_subject + 1)]
            views = [view for view in CASIA_B_VIEWS if view not in section.exclude_views]
            self.synthetic = SyntheticGaitDataset(section.root, synthetic_subjects, views)
            self.synthetic_labels, synthetic_classes = _labels(self.synthetic.keys, offset=num_classes)
            self.synthetic_sampler = PKBatchSampler(self.synthetic_labels, section.p, section.k)
            num_classes += synthetic_classes
        torch.manual_seed(runtime.seed)
        architecture = config.model.model_dump()
        if config.branch_3d is None:
            self.model_config: GaitBaseConfig = GaitBaseConfig(**architecture, num_classes=num_classes)
            self.model: GaitBase | MeshGait = GaitBase(self.model_config)
        else:
            assert self.synthetic is not None
            self.model_config = MeshGaitConfig(**architecture, **config.branch_3d.model_dump(),
                                               vertices=self.synthetic.num_vertices, num_classes=num_classes)
            self.model = MeshGait(self.model_config)
            self.model.set_body_model(torch.from_numpy(self.synthetic.marker_interpolation).float(),
                                      torch.from_numpy(self.synthetic.joint_regressor).float())
        if config.init_weights is not None:
            self._initialise_from(config.init_weights)
        self.model = self.model.to(self.device)
        self.memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        optim = config.optim
        groups = parameter_groups(self.model, optim)
        if optim.name == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, optim))
        self.use_cuda_amp = self.device.type == "cuda"
        wants_cpu_bf16 = self.device.type == "cpu" and config.runtime.cpu_bf16
        self.use_cpu_bf16 = wants_cpu_bf16 and cpu_has_fast_bf16()
        if wants_cpu_bf16 and not self.use_cpu_bf16:
            log.warning("runtime.cpu_bf16 asked for, but this CPU has no native bfloat16 (oneDNN): training in "
                        "float32, which is several times faster here than emulated bfloat16")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_cuda_amp)
        self.step = 0
        log.info("training name=%s model=%s device=%s sequences=%d synthetic_sequences=%d identities=%d params=%d",
                 config.name, model_kind(self.model), self.device, len(self.labels),
                 0 if self.synthetic is None else len(self.synthetic.keys), num_classes,
                 sum(p.numel() for p in self.model.parameters()))

    def _initialise_from(self, path: Path) -> None:
        """Copy a weights file's parameters into the fresh model; it must be the same network, classes included,
        or a GaitBase whose classes are the first of the run's (its data adds identities after the file's: new
        synthetic subjects sort after those it was trained on, so each old class keeps its label).

        A GaitBase file may also start a Mesh-Gait built on the same GaitBase (architecture and classes): it fills
        the silhouette branch, the 3D branch starts fresh and the fusion's projection starts at zero, so the first
        step's embeddings are the GaitBase's and the 3D features enter only as far as training lets them.
        """
        model, info = load_gait_model(path)
        wanted = self.model_config.model_dump(mode="json")
        starts = (isinstance(self.model, GaitBase) and self.model.config.extends(model.config)) or (
            isinstance(self.model, MeshGait)
            and info["config"] == self.model.silhouette_branch.config.model_dump(mode="json"))
        if (info["kind"], info["config"]) == (model_kind(self.model), wanted):
            self.model.load_state_dict(model.state_dict())
        elif info["kind"] == "gaitbase" and starts:
            self.model.start_from(model)
        else:
            raise CheckpointError(f"{path}: init_weights is a {info['kind']} with config {info['config']}, the run "
                                  f"builds a {model_kind(self.model)} with {wanted}")
        log.info("initialised from weights=%s (%s, %s)", path, info["name"], info["kind"])

    def resume(self, path: Path) -> None:
        """Restore every state saved by `save_checkpoint`; the next step is the checkpoint's step."""
        data = load_checkpoint(path)
        if data["model_config"] != self.model_config.model_dump(mode="json") or \
                data.get("model_kind", "gaitbase") != model_kind(self.model):
            raise CheckpointError(f"{path}: model config differs from the run's config; use a fresh run_dir")
        try:
            self.model.load_state_dict(data["model"])
            self.optimizer.load_state_dict(data["optimizer"])
            self.scheduler.load_state_dict(data["scheduler"])
            self.scaler.load_state_dict(data["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: state does not fit this run ({exc})") from exc
        torch.set_rng_state(data["torch_rng"])
        if self.device.type == "cuda" and data.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(data["cuda_rng"])
        self.step = int(data["step"])
        log.info("resumed checkpoint=%s step=%d", path, self.step)

    def save_checkpoint(self) -> Path:
        path = checkpoint_path(self.config.run_dir, self.step)
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "run_name": self.config.name,
                "step": self.step,
                "model_kind": model_kind(self.model),
                "model_config": self.model_config.model_dump(mode="json"),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            },
            path,
        )
        kept = sorted((path.parent).glob("step_*.pt"))
        for old in kept[: -self.config.runtime.keep_checkpoints]:
            old.unlink()
        return path

    def _sequences(self, dataset: Any, indices: np.ndarray, rng: np.random.Generator,
                   with_targets: bool, augment: AugmentConfig) -> tuple[list[np.ndarray], list[Any]]:
        frames_per_sequence = self.config.data.frames
        sequences, targets = [], []
        for index in indices:
            frame_idx = fixed_frame_indices(dataset.num_frames(int(index)), frames_per_sequence, rng)
            frames = dataset.frames_at(int(index), frame_idx)
            augmented, flipped = augment_sequence_flipped(frames, augment, rng)
            sequences.append(augmented)
            if with_targets:
                truth = dataset.targets_at(int(index), frame_idx)
                targets.append(truth.flipped(dataset.mirror) if flipped else truth)
        return sequences, targets

    def batch(self, step: int) -> Batch:
        """Step `step`'s batch: the real P x K sequences, then the synthetic ones with their 3D targets.

        A flipped synthetic sequence gets the mirror-image person's 3D targets; the other augmentations change
        pixels only and leave the targets as they are, which is label noise (a 10 degree turn moves the head 5 px):
        `synthetic.augment` can switch them off for the synthetic sequences alone.
        """
        rng = np.random.default_rng([self.config.runtime.seed, step])
        indices = self.sampler.sample(rng)
        sequences, _ = self._sequences(self.dataset, indices, rng, with_targets=False, augment=self.config.data.augment)
        labels = self.labels[indices]
        points = vertices = mirrored = None
        if self.synthetic is not None:
            synthetic_indices = self.synthetic_sampler.sample(rng)
            wants_3d = isinstance(self.model, MeshGait)
            section = self.config.synthetic
            assert section is not None
            augment = self.config.data.augment if section.augment is None else section.augment
            synthetic, targets = self._sequences(self.synthetic, synthetic_indices, rng, with_targets=wants_3d,
                                                 augment=augment)
            sequences += synthetic
            labels = np.concatenate([labels, self.synthetic_labels[synthetic_indices]])
            if wants_3d:
                mirror = self.synthetic.mirror if self.config.loss.mirror_invariant_3d else None
                points, vertices, mirrored = target_tensors(targets, mirror, self.device,
                                                            canonical=self.config.loss.mirror_rule_3d == "canonical")
        silhouettes = torch.from_numpy(np.stack(sequences)).to(self.device).float().div_(255.0)
        return Batch(silhouettes=silhouettes, labels=torch.from_numpy(labels).to(self.device),
                     synthetic_from=len(indices), points=points, vertices=vertices, mirrored=mirrored)

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the logged numbers."""
        started = time.perf_counter()
        batch = self.batch(self.step)
        labels = batch.labels
        self.model.train()
        loss_cfg = self.config.loss
        amp_dtype = torch.float16 if self.use_cuda_amp else torch.bfloat16
        amp_enabled = self.use_cuda_amp or self.use_cpu_bf16
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_enabled):
            if isinstance(self.model, MeshGait):
                output = self.model(batch.silhouettes, with_3d=True, decode_3d_for=slice(batch.synthetic_from, None),
                                    heatmaps_from_3d_only=not loss_cfg.identity_into_3d_head)
            else:
                output = self.model(batch.silhouettes)
        if output.logits is None:
            raise EngineError("the model returned no logits; training needs the BNNeck classifier")
        triplet = triplet_loss(output.embeddings, labels, loss_cfg.triplet_margin)
        ce = cross_entropy_loss(output.logits, labels, loss_cfg.ce_scale, loss_cfg.label_smoothing)
        loss = loss_cfg.triplet_weight * triplet.loss + loss_cfg.ce_weight * ce
        losses_3d: dict[str, torch.Tensor] = {}
        if batch.points is not None and batch.vertices is not None:
            losses_3d = mesh_losses(output, batch.points, batch.vertices, mirrored=batch.mirrored)
            weights = loss_cfg.weights_3d()
            loss = loss + sum(weights[name] * value for name, value in losses_3d.items())
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        accuracy = (output.logits.detach().float().mean(1).argmax(-1) == labels).float().mean()
        record = {
            "step": self.step,
            "loss": float(loss.detach()),
            "triplet": float(triplet.loss.detach()),
            "triplet_active": triplet.active_fraction,
            "mean_distance": triplet.mean_distance,
            "ce": float(ce.detach()),
            "ce_accuracy": float(accuracy),
        }
        record.update({f"l1_{name}": float(value.detach()) for name, value in losses_3d.items()})
        record.update({"lr": lr, "seconds_per_step": time.perf_counter() - started})
        return record

    def run(self, stop_step: int | None = None, progress: bool = True) -> TrainResult:
        """Train up to `stop_step` (default: optim.total_steps), checkpointing every N steps and at the stop."""
        total = self.config.optim.total_steps
        stop = total if stop_step is None else min(stop_step, total)
        run_dir = Path(self.config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / "losses.jsonl"
        _truncate_log(log_path, self.step)
        last_checkpoint = None
        every = self.config.runtime.checkpoint_every_steps
        with log_path.open("a") as log_file, tqdm(
            total=stop, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True
        ) as bar:
            while self.step < stop:
                record = self.train_step()
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['ce_accuracy']:.2f}",
                                s_step=f"{record['seconds_per_step']:.1f}")
                bar.update(1)
                if self.step % every == 0 or self.step == stop:
                    last_checkpoint = self.save_checkpoint()
        weights = None
        if self.step >= total:
            weights = run_dir / "weights.pt"
            save_weights(self.model, weights, name=self.config.name, metadata=self.metadata())
        return TrainResult(run_dir=run_dir, step=self.step, last_checkpoint=last_checkpoint, weights=weights)

    def metadata(self) -> dict[str, Any]:
        """What a weights file records about how it was trained (JSON-safe)."""
        return weights_metadata(self.config, self.step)


def weights_metadata(config: TrainConfig, step: int, **extra: Any) -> dict[str, Any]:
    """What a weights file records about its training (JSON-safe), including the walking direction the pipeline
    mirrors walks to (`walk_direction`)."""
    return {
        "step": step,
        **extra,
        "train_config": json.loads(config.model_dump_json()),
        "dataset": "CASIA-B (research use only; models trained on it inherit that restriction)"
                   + ("" if config.synthetic is None else " + synthetic 3D gait (tools/make_synthetic.py)"),
        "walk_direction": config.data.walk_direction,
        "torch": str(torch.__version__),
    }


def _labels(keys: list[Any], offset: int) -> tuple[NDArray[np.int64], int]:
    """Class labels `offset, offset + 1, ...` in subject order for each sequence key, and the number of classes."""
    subjects = sorted({key.subject for key in keys})
    label_of = {subject: offset + label for label, subject in enumerate(subjects)}
    return np.asarray([label_of[key.subject] for key in keys], dtype=np.int64), len(subjects)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def train(config: TrainConfig, *, resume: bool = False, stop_step: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train (or continue, with `resume`, from the newest checkpoint in the run folder) up to `stop_step`."""
    trainer = Trainer(config)
    if resume:
        latest = latest_checkpoint(config.run_dir)
        if latest is None:
            log.info("no checkpoint in %s; starting from step 0", Path(config.run_dir) / "checkpoints")
        else:
            trainer.resume(latest)
    elif latest_checkpoint(config.run_dir) is not None:
        raise EngineError(
            f"{config.run_dir}: already holds checkpoints; pass --resume to continue or choose another run_dir"
        )
    return trainer.run(stop_step, progress=progress)


def park_run(config: TrainConfig, parked_root: Path) -> Path:
    """Copy the run's newest checkpoint and its loss log to `parked_root/<run folder>/`, replacing an older parking.

    Run folders live under the git-ignored `runs/`, which a fresh machine does not have; one parked checkpoint of a
    compact network is small enough to commit, so a CPU run longer than a working session continues where it stopped
    (`unpark_run`) instead of starting again.
    """
    source = latest_checkpoint(config.run_dir)
    if source is None:
        raise CheckpointError(f"{Path(config.run_dir) / 'checkpoints'}: no checkpoint to park")
    step = int(load_checkpoint(source)["step"])  # and a corrupt checkpoint must not replace a good parking
    target = Path(parked_root) / Path(config.run_dir).name
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("step_*.pt"):
        if old.name != source.name:
            old.unlink()
    shutil.copyfile(source, target / source.name)
    log_path = Path(config.run_dir) / "losses.jsonl"
    if log_path.exists():
        shutil.copyfile(log_path, target / "losses.jsonl")
        _truncate_log(target / "losses.jsonl", step)
    return target / source.name


def unpark_run(config: TrainConfig, parked_root: Path) -> Path | None:
    """Put a parked checkpoint (and its loss log) into the run folder unless that holds one as new or newer.

    Returns the checkpoint brought in, or None when there was nothing newer to bring.
    """
    parked = latest_checkpoint(Path(parked_root) / Path(config.run_dir).name, folder="")
    current = latest_checkpoint(config.run_dir)
    if parked is None or (current is not None and current.name >= parked.name):
        return None
    target = checkpoint_path(config.run_dir, int(load_checkpoint(parked)["step"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parked, target)
    if (parked.parent / "losses.jsonl").exists():
        shutil.copyfile(parked.parent / "losses.jsonl", Path(config.run_dir) / "losses.jsonl")
    log.info("unparked checkpoint=%s into %s", parked, target.parent)
    return target


def export_weights(config: TrainConfig, checkpoint: Path | None, out: Path) -> Path:
    """Write release weights (fp16 + metadata) from a checkpoint (default: the run's newest) to `out`."""
    source = checkpoint or latest_checkpoint(config.run_dir)
    if source is None:
        raise CheckpointError(f"{Path(config.run_dir) / 'checkpoints'}: no checkpoint to export weights from")
    data = load_checkpoint(source)
    model = build_model(data.get("model_kind", "gaitbase"), data["model_config"])
    model.load_state_dict(data["model"])
    metadata = weights_metadata(config, int(data["step"]), checkpoint=Path(source).name)
    save_weights(model, out, name=config.name, metadata=metadata)
    return Path(out)
