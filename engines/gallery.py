"""The gallery: enrolled identities and their gait embeddings, in one SQLite file or on a PostgreSQL server.

SQLite in WAL mode with full synchronisation: every enrolment is one transaction, so a process killed mid-write
leaves the file openable with every identity committed before the kill, and readers (the match stage) never block
the writer (an enrolment running beside a live pipeline). The gallery records the encoder that produced its
embeddings and refuses embeddings from any other encoder, because distances between two encoders' embeddings mean
nothing. `open_gallery` picks the backend from the location: a path (or `sqlite:///path`) is this SQLite store, a
`postgresql://` URL the shared store of `engines.gallery_postgres` (many hosts, one set of identities), with the same
methods. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray

from engines.errors import EngineError

SCHEMA_VERSION = 1
GALLERY_ENV = "GAITSTREAM_GALLERY"
DEFAULT_GALLERY = Path("gallery.sqlite")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path.
SQLITE_PREFIX = "sqlite:///"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    anonymous INTEGER NOT NULL DEFAULT 0,
    created_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    stream TEXT NOT NULL DEFAULT '',
    track_id INTEGER,
    frames INTEGER,
    enrolled_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS embeddings_identity ON embeddings(identity_id);
"""


class GalleryError(EngineError):
    """The gallery cannot be opened or would be corrupted by the request (wrong encoder, unknown name)."""


def is_postgres_url(location: str | Path | None) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def gallery_location(value: str | Path) -> Path | str:
    """A file gallery as a Path (`sqlite:///` stripped), a postgresql:// URL as the string itself."""
    if is_postgres_url(value):
        return str(value)
    text = str(value)
    return Path(text.removeprefix(SQLITE_PREFIX)).expanduser()


def resolve_gallery_path(explicit: str | Path | None) -> Path | str:
    """`--gallery` or the config value, else $GAITSTREAM_GALLERY, else ./gallery.sqlite: a Path for a file, the
    URL unchanged for a PostgreSQL gallery."""
    return gallery_location(explicit or os.environ.get(GALLERY_ENV) or DEFAULT_GALLERY)


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def open_gallery(location: str | Path, *, create: bool = True) -> Gallery:
    """The gallery at `location` (see `gallery_location`): SQLite for files, PostgreSQL for postgresql:// URLs.

    The PostgreSQL backend needs the optional `cluster` extra; without it the error says how to install it,
    rather than an ImportError from deep inside a tool.
    """
    resolved = gallery_location(location)
    if isinstance(resolved, Path):
        return GalleryStore(resolved, create=create)
    try:
        backend = importlib.import_module("engines.gallery_postgres")
    except ImportError as exc:
        if (exc.name or "").startswith("engines"):  # a fault of ours, not a missing extra
            raise
        raise GalleryError(f"a PostgreSQL gallery ({redact_url(resolved)}) needs the cluster extra: "
                           f"pip install .[cluster] (missing {exc.name or exc})") from exc
    return backend.PostgresGalleryStore(resolved, create=create)


@dataclass(frozen=True)
class IdentitySummary:
    """One identity as `tools/gallery.py list` shows it."""

    name: str
    embeddings: int
    anonymous: bool
    first_enrolled_s: float
    last_enrolled_s: float
    sources: tuple[str, ...]


@dataclass(frozen=True)
class GallerySnapshot:
    """Every embedding at one moment: `vectors` (M, D) float32, `owners` (M,) index into `names`."""

    names: tuple[str, ...]
    vectors: NDArray[np.float32]
    owners: NDArray[np.int64]
    encoder: str | None
    parts: int
    anonymous: int = 0  # how many of `names` are anonymous (auto-enrolled strangers)


class Gallery(Protocol):
    """What every gallery backend offers (`GalleryStore`, `engines.gallery_postgres.PostgresGalleryStore`)."""

    path: Path | str  # where it is, as messages show it (a URL without its password)

    @property
    def encoder(self) -> str | None: ...
    @property
    def parts(self) -> int: ...
    @property
    def embedding_dim(self) -> int | None: ...
    def data_version(self) -> int: ...
    def check_can_add(self, name: str, encoder: str) -> None: ...
    def add(self, name: str, vectors: NDArray[np.float32], *, encoder: str, parts: int, source: str = "",
            stream: str = "", track_id: int | None = None, frames: int | None = None,
            anonymous: bool = False) -> int: ...
    def rename(self, old: str, new: str) -> None: ...
    def delete(self, name: str) -> int: ...
    def identities(self) -> list[IdentitySummary]: ...
    def snapshot(self) -> GallerySnapshot: ...
    def export(self, path: str | Path) -> tuple[Path, int]: ...
    def import_(self, path: str | Path) -> int: ...
    def close(self) -> None: ...


def checked_name(name: str) -> str:
    """An identity name without surrounding blanks; `GalleryError` for an empty one."""
    if not str(name).strip():
        raise GalleryError("identity name must not be empty")
    return str(name).strip()


def checked_vectors(name: str, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """Embeddings to store as (k, D) contiguous float32; `GalleryError` for any other shape or a NaN/inf."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise GalleryError(f"expected embeddings of shape (k, D) with k >= 1, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise GalleryError(f"embeddings for {name!r} hold NaN or infinite values: refused")
    return vectors


class GalleryExchange(ABC):
    """Export and import as .npz, the same for every backend: each needs only `snapshot`, `add` and
    `_held_vectors`."""

    @abstractmethod
    def snapshot(self) -> GallerySnapshot: ...

    @abstractmethod
    def add(self, name: str, vectors: NDArray[np.float32], *, encoder: str, parts: int, source: str = "") -> int: ...

    @abstractmethod
    def _held_vectors(self, name: str) -> set[bytes]:
        """The raw float32 bytes of every embedding `name` holds (for an idempotent import)."""

    def export(self, path: str | Path) -> tuple[Path, int]:
        """Write every identity's embeddings to an .npz (portable, no pickle; `.npz` is added to a path without it,
        folders are made); returns the path written and the embedding count."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        snap = self.snapshot()
        meta = {"encoder": snap.encoder, "parts": snap.parts, "schema_version": SCHEMA_VERSION}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, names=np.asarray(snap.names, dtype=str), vectors=snap.vectors, owners=snap.owners,
                     meta=np.asarray(json.dumps(meta)))
        except OSError as exc:
            raise GalleryError(f"cannot export to {path}: {exc.strerror or exc}") from exc
        return path, len(snap.vectors)

    def import_(self, path: str | Path) -> int:
        """Add every identity of an exported .npz (refused if its encoder differs); returns embeddings added.

        Embeddings an identity already holds (an export imported twice) are skipped, so importing is idempotent.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                names, vectors, owners = list(data["names"]), data["vectors"], data["owners"]
                meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise GalleryError(f"cannot import {path}: not a gallery export ({exc})") from exc
        added = 0
        for index, name in enumerate(names):
            held = self._held_vectors(str(name))
            rows = np.asarray([v for v in vectors[owners == index] if np.float32(v).tobytes() not in held])
            if len(rows):
                added += self.add(str(name), rows, encoder=meta["encoder"], parts=int(meta["parts"]),
                                  source=f"import:{Path(path).name}")
        return added


class GalleryStore(GalleryExchange):
    """Identities with several embeddings each, the encoder that made them, and when and where."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self._own_commits = 0  # PRAGMA data_version ignores this connection's own commits
        if not create and not self.path.is_file():
            raise GalleryError(f"gallery not found: {self.path} (enrol someone with tools/enroll.py first)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise GalleryError(f"{self.path}: gallery schema {version}, this build reads {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"cannot open gallery {self.path}: {exc}") from exc

    # --- metadata ----------------------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def encoder(self) -> str | None:
        """Name of the encoder every embedding here came from (None while empty)."""
        return self._meta("encoder")

    @property
    def parts(self) -> int:
        return int(self._meta("parts") or 1)

    @property
    def embedding_dim(self) -> int | None:
        value = self._meta("embedding_dim")
        return int(value) if value else None

    def data_version(self) -> int:
        """Changes whenever any connection (any process, this one included) commits; cheap enough to poll."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0]) + self._own_commits

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._own_commits += 1

    def _check_encoder(self, encoder: str, dim: int, parts: int) -> None:
        current = self.encoder
        if current is None:
            self._set_meta("encoder", encoder)
            self._set_meta("embedding_dim", str(dim))
            self._set_meta("parts", str(parts))
        elif current != encoder:
            raise GalleryError(
                f"{self.path} holds embeddings of encoder {current}; refusing embeddings of {encoder} "
                f"(use another gallery file, or re-enrol everyone with the new encoder)"
            )
        elif self.embedding_dim != dim:
            raise GalleryError(f"{self.path}: embeddings are {self.embedding_dim}-D, got {dim}-D")

    # --- writing -------------------------------------------------------------------------------------------------
    def check_can_add(self, name: str, encoder: str) -> None:
        """Fail now, before a walk is recorded, if `add(name, ..., encoder=encoder)` would fail: a blank name,
        embeddings of another encoder, or a gallery that cannot be written (read-only file or folder, locked)."""
        checked_name(name)
        if self.encoder is not None and self.encoder != encoder:
            raise GalleryError(f"{self.path} holds embeddings of encoder {self.encoder}; this pipeline's is {encoder} "
                               f"(use another gallery file, or re-enrol everyone with the new encoder)")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"cannot write gallery {self.path}: {exc}") from exc

    def add(
        self,
        name: str,
        vectors: NDArray[np.float32],
        *,
        encoder: str,
        parts: int,
        source: str = "",
        stream: str = "",
        track_id: int | None = None,
        frames: int | None = None,
        anonymous: bool = False,
    ) -> int:
        """Add embeddings (k, D) to `name` (created if new) in one transaction; returns how many were added."""
        vectors = checked_vectors(name, vectors)
        name = checked_name(name)
        now = time.time()
        with self._transaction():
            self._check_encoder(encoder, vectors.shape[1], parts)
            self._db.execute("INSERT OR IGNORE INTO identities(name, anonymous, created_s) VALUES (?, ?, ?)",
                             (name, int(anonymous), now))
            identity_id = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()[0]
            self._db.executemany(
                "INSERT INTO embeddings(identity_id, vector, source, stream, track_id, frames, enrolled_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(identity_id, v.tobytes(), source, stream, track_id, frames, now) for v in vectors],
            )
        return len(vectors)

    def rename(self, old: str, new: str) -> None:
        new = checked_name(new)
        with self._transaction():
            if self._db.execute("SELECT 1 FROM identities WHERE name = ?", (new,)).fetchone():
                raise GalleryError(f"an identity named {new!r} already exists")
            changed = self._db.execute("UPDATE identities SET name = ?, anonymous = 0 WHERE name = ?", (new, old))
            if changed.rowcount == 0:
                raise GalleryError(f"no identity named {old!r} in {self.path}")

    def delete(self, name: str) -> int:
        """Remove an identity and its embeddings; returns how many embeddings went with it."""
        with self._transaction():
            row = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise GalleryError(f"no identity named {name!r} in {self.path}")
            count = self._db.execute("SELECT COUNT(*) FROM embeddings WHERE identity_id = ?", row).fetchone()[0]
            self._db.execute("DELETE FROM identities WHERE id = ?", row)
            if not self._db.execute("SELECT 1 FROM identities LIMIT 1").fetchone():
                for key in ("encoder", "embedding_dim", "parts"):
                    self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        return int(count)

    # --- reading -------------------------------------------------------------------------------------------------
    def identities(self) -> list[IdentitySummary]:
        rows = self._db.execute(
            "SELECT i.name, COUNT(e.id), i.anonymous, MIN(e.enrolled_s), MAX(e.enrolled_s), "
            "GROUP_CONCAT(DISTINCT e.source) FROM identities i LEFT JOIN embeddings e ON e.identity_id = i.id "
            "GROUP BY i.id ORDER BY i.name"
        ).fetchall()
        return [IdentitySummary(name, count, bool(anon), first or 0.0, last or 0.0,
                                tuple(s for s in (sources or "").split(",") if s))
                for name, count, anon, first, last, sources in rows]

    def snapshot(self) -> GallerySnapshot:
        rows = self._db.execute(
            "SELECT i.name, e.vector, i.anonymous FROM embeddings e JOIN identities i ON i.id = e.identity_id "
            "ORDER BY i.name, e.id"
        ).fetchall()
        names: list[str] = []
        anonymous = 0
        owners = np.zeros(len(rows), np.int64)
        for row_index, (name, _, anon) in enumerate(rows):
            if not names or names[-1] != name:
                names.append(name)
                anonymous += bool(anon)
            owners[row_index] = len(names) - 1
        dim = self.embedding_dim or 0
        vectors = (np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)
                   if rows else np.zeros((0, dim), np.float32))
        return GallerySnapshot(tuple(names), vectors, owners, self.encoder, self.parts, anonymous)

    def _held_vectors(self, name: str) -> set[bytes]:
        return {bytes(row[0]) for row in self._db.execute(
            "SELECT e.vector FROM embeddings e JOIN identities i ON i.id = e.identity_id WHERE i.name = ?", (name,))}

    def close(self) -> None:
        self._db.close()
