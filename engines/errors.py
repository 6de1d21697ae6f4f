"""Errors raised at the engines' boundaries: weights, inference backends, datasets, checkpoints.

Each message says what failed, where (path), why, and what to do next; the command-line tools print it as one line
without a traceback. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engines' errors; tools print these as one line and exit non-zero."""


class WeightsNotFound(EngineError):
    """An encoder artefact (.pt, .onnx, .engine) does not exist where it was looked for."""


class BackendUnavailable(EngineError):
    """An explicitly requested inference backend cannot run here (missing package, device or artefact)."""


class DatasetError(EngineError):
    """A dataset path does not exist, holds no sequences, or holds something other than the expected layout."""


class CheckpointError(EngineError):
    """A checkpoint or weights file cannot be read or does not hold what a checkpoint must hold."""


class ConfigFileError(EngineError):
    """A training or evaluation config file is unreadable or invalid (the message names file and key)."""
