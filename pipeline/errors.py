"""Errors raised at the runtime's boundaries (config, sources, wire, transport).

Each message says what failed, where (file, key, URL, path), why, and what to do next; command-line entry points
print it as one line. Must not import `stages` or `engines`.
"""

from __future__ import annotations


class GaitstreamError(Exception):
    """Base of the runtime's errors; the CLI prints these as one line, without a traceback."""


class ConfigError(GaitstreamError):
    """A config file, key or command-line override is invalid."""


class SourceError(GaitstreamError):
    """A video source cannot be opened or read (missing file, not a video, unreachable stream)."""


class SchemaError(GaitstreamError):
    """A message on the wire is malformed or of an unknown schema version."""


class StaleFrame(GaitstreamError):
    """A shared-memory slot was reused before its reader got to it."""


class TransportError(GaitstreamError):
    """An endpoint cannot be bound or connected, or its keys are missing."""


class FatalError(GaitstreamError):
    """Retrying cannot fix this (disk full, no display): the stage reports it and the run stops."""
