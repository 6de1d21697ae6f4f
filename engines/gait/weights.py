"""Reading and writing gait networks (GaitBase, Mesh-Gait): small fp16 release files and full training checkpoints.

A weights file is a `torch.save`d dict `{"format": "gaitstream-weights", "version": 1, "model": "gaitbase" or
"meshgait", "config": {...}, "metadata": {...}, "state_dict": {name: fp16 tensor}}`; a training checkpoint
(`engines/train.py`) holds the float32 `model` state plus optimiser state and the same "model" kind (absent in
older checkpoints: GaitBase). Both load with `torch.load(weights_only=True)`, which never runs code from the file,
and `load_gait_model` accepts either.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from engines.backends import artefact_sha256
from engines.errors import CheckpointError, WeightsNotFound
from engines.gait.gaitbase import GaitBase, GaitBaseConfig
from engines.gait.meshgait import MeshGait, MeshGaitConfig

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "gaitstream-weights"
CHECKPOINT_FORMAT = "gaitstream-train-checkpoint"
HOW_TO_GET = (
    "the project ships weights/gaitbase_wild_synthetic_compact_casiab.pt (default), weights/meshgait_compact_casiab.pt "
    "and weights/gaitbase_compact_casiab.pt; or train one with "
    "`tools/run_arm.sh configs/train/gaitbase_wild_synthetic_compact_casiab.yaml` (or any config in configs/train/)"
)


#: Network kind (the files' "model" field) -> class and config class.
MODEL_KINDS: dict[str, tuple[type[torch.nn.Module], type[GaitBaseConfig]]] = {
    "gaitbase": (GaitBase, GaitBaseConfig),
    "meshgait": (MeshGait, MeshGaitConfig),
}


def model_kind(model: torch.nn.Module) -> str:
    """The "model" field a file records for `model`."""
    return next(kind for kind, (cls, _) in MODEL_KINDS.items() if type(model) is cls)


def build_model(kind: str, config: dict[str, Any]) -> GaitBase | MeshGait:
    """A fresh network of `kind` from a config dict; `CheckpointError` for an unknown kind or invalid config."""
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown gait network {kind!r} (known: {', '.join(MODEL_KINDS)})")
    cls, config_cls = MODEL_KINDS[kind]
    try:
        return cls(config_cls.model_validate(config))
    except ValidationError as exc:
        raise CheckpointError(f"invalid {kind} config ({exc.errors()[0]['loc']}: {exc.errors()[0]['msg']})") from exc


def read_torch_file(path: Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)` with missing/corrupt files turned into `WeightsNotFound`/`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(f"{path}: no such file (looked at {path.resolve()}); {HOW_TO_GET}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch file ({reason})") from exc
    if not isinstance(data, dict) or data.get("format") not in (WEIGHTS_FORMAT, CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path}: not a gaitstream weights file or training checkpoint (no 'format' of {WEIGHTS_FORMAT!r} "
            f"or {CHECKPOINT_FORMAT!r})"
        )
    return data


def atomic_torch_save(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file and rename, so a crash mid-write never leaves a truncated file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_weights(model: GaitBase | MeshGait, path: Path, *, name: str, metadata: dict[str, Any]) -> None:
    """Write a release weights file: fp16 state dict (BN statistics too) + config + JSON-safe metadata."""
    json.dumps(metadata)  # fail here, not in a reader, if the metadata is not JSON
    state = {key: (value.half() if value.is_floating_point() else value).cpu()
             for key, value in model.state_dict().items()}
    atomic_torch_save(
        {
            "format": WEIGHTS_FORMAT,
            "version": 1,
            "model": model_kind(model),
            "name": name,
            "config": model.config.model_dump(mode="json"),
            "metadata": metadata,
            "state_dict": state,
        },
        path,
    )
    log.info("wrote weights path=%s bytes=%d", path, Path(path).stat().st_size)


def update_metadata(path: Path, **fields: Any) -> dict[str, Any]:
    """Set `fields` in a release weights file's metadata (atomically); returns the new metadata.

    The network is untouched, but the file's sha256, and with it the encoder's name, changes: a gallery enrolled
    with the old file refuses the new one, which is right when the calibration it carries has changed.
    """
    data = read_torch_file(path)
    if data["format"] != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path}: a training checkpoint; export release weights first (tools/train.py "
                              "--export-weights) and calibrate those")
    metadata = {**data.get("metadata", {}), **fields}
    json.dumps(metadata)
    atomic_torch_save({**data, "metadata": metadata}, path)
    return metadata


def load_gait_model(path: Path) -> tuple[GaitBase | MeshGait, dict[str, Any]]:
    """A float32 GaitBase or Mesh-Gait in eval mode from a weights file or a training checkpoint, plus an info dict.

    The info dict has `name` (e.g. "gaitbase-compact-casiab@3f2a9c1d"), `kind`, `config`, `metadata`, `sha256`.
    """
    path = Path(path)
    data = read_torch_file(path)
    is_weights = data["format"] == WEIGHTS_FORMAT
    kind = data.get("model", "gaitbase") if is_weights else data.get("model_kind", "gaitbase")
    try:
        model = build_model(kind, data["config"] if is_weights else data["model_config"])
        state = data["state_dict"] if is_weights else data["model"]
        model.load_state_dict({key: value.float() if value.is_floating_point() else value
                               for key, value in state.items()})
    except (KeyError, CheckpointError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: does not hold a {kind} model ({type(exc).__name__}: {exc})") from exc
    model.eval()
    sha = artefact_sha256(path)
    base_name = data.get("name") or data.get("run_name") or path.stem
    info = {
        "name": f"{base_name}@{sha[:8]}",
        "kind": kind,
        "config": model.config.model_dump(mode="json"),
        "metadata": data.get("metadata", {"step": data.get("step")}),
        "sha256": sha,
    }
    return model, info
