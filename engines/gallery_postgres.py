"""The gallery on PostgreSQL + pgvector: one set of identities shared by many hosts, behind `GalleryStore`'s methods.

Storage. Each embedding is stored twice. `vector` (pgvector `vector`, float32) holds it exactly as enrolled: the
matcher's decision, the part-averaged cosine distance computed in numpy (`engines.matching`), reads these values,
so a PostgreSQL gallery decides bit for bit as a SQLite one and exports round-trip. `search` (pgvector `halfvec`,
float16) holds it part-normalised (`normalise_parts`: each part unit length, scaled by 1/sqrt(parts)), whose inner
product *is* the mean per-part cosine similarity; an HNSW index over it (`halfvec_ip_ops`) therefore pre-selects
candidates by the decision's own metric, at half precision, for galleries too large to scan (`preselect`); it
never decides. Why halfvec there: HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000, and our
encoders give 16 x 128 = 2048-D embeddings. Per-part storage (16 rows or columns of 128-D) would fit `vector`, but no
per-part index can rank by the mean over parts, and float16 for the decision itself would change distances from the
SQLite backend's; the extra 2 bytes per value buy both. The index is made when the first embedding fixes the
dimension (an HNSW index needs it in the type) and dropped when the gallery empties, with the encoder record.

Changes. Every write (add, rename, delete) runs in one transaction that takes one advisory lock, appends a row to the
append-only `changes` log (sequence number, kind, identity, embedding ids added; never names or vectors, so an
erased person leaves no biometric data behind) and sends `NOTIFY gaitstream_gallery, '<seq>'`, delivered at commit.
The lock serialises writers, so sequence numbers commit in order and a reader that has applied change N has seen
everything before it. Identity and embedding ids are UUIDs made by the client and inserted with `ON CONFLICT DO
NOTHING`: an enrolment retried after a lost acknowledgement (or sent twice) adds nothing the second time.

Followers. `GalleryFollower` keeps an in-memory copy for a match stage: a background thread LISTENs for the hint,
then reads every change after the last one it applied, in one repeatable-read snapshot. A thread rather than polls
from `on_tick`: connecting, reconnecting and reading are blocking network I/O of unbounded length, and a stage
never blocks; the stage only picks up the complete snapshot the thread publishes. Notifications sent while it was
disconnected are lost, which the catch-up by sequence number makes harmless. Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psycopg
from numpy.typing import NDArray
from pgvector import HalfVector, Vector
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from engines.gallery import (
    GalleryError,
    GalleryExchange,
    GallerySnapshot,
    IdentitySummary,
    checked_name,
    checked_vectors,
    redact_url,
)
from engines.matching import normalise_parts

log = logging.getLogger(__name__)

CHANNEL = "gaitstream_gallery"
WRITE_LOCK = 0x67616C6C65727931  # pg_advisory_xact_lock key of every gallery write
MIGRATION_LOCK = 0x67616C6C65727932  # held while the schema is migrated (hosts starting together)
HALFVEC_HNSW_MAX_DIM = 4000
#: libpq options of every connection: a server or network that vanished without a word is an error within about
#: 30 s (TCP keepalives while idle, a user timeout while a query waits), not after the system's two hours.
LIVENESS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": 30_000}

#: Schema steps, applied in order, each in its own transaction with its row in schema_migrations. Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE gallery_encoder (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        name text NOT NULL,
        embedding_dim integer NOT NULL,
        parts integer NOT NULL
    );
    CREATE TABLE identities (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE,
        anonymous boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE embeddings (
        id uuid PRIMARY KEY,
        identity_id uuid NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        ordinal bigint GENERATED ALWAYS AS IDENTITY,
        vector vector NOT NULL,
        search halfvec NOT NULL,
        source text NOT NULL DEFAULT '',
        stream text NOT NULL DEFAULT '',
        track_id bigint,
        frames integer,
        enrolled_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX embeddings_identity ON embeddings(identity_id);
    CREATE TABLE changes (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('add', 'rename', 'delete')),
        identity_id uuid NOT NULL,
        embedding_ids uuid[] NOT NULL DEFAULT '{}',
        committed_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE FUNCTION gallery_changes_are_append_only() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'the gallery change log is append-only'; END $$;
    CREATE TRIGGER changes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON changes
        FOR EACH STATEMENT EXECUTE FUNCTION gallery_changes_are_append_only();
    """,
    # Making and dropping an index needs the table's owner; as functions that run with the owner's rights, the
    # writer role may do it without owning (and so being able to drop) the tables.
    """
    CREATE FUNCTION gallery_create_search_index(dim integer) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
        SET search_path FROM CURRENT AS $$ BEGIN
            EXECUTE format('CREATE INDEX IF NOT EXISTS embeddings_search ON embeddings '
                           'USING hnsw ((search::halfvec(%s)) halfvec_ip_ops)', dim);
        END $$;
    CREATE FUNCTION gallery_drop_search_index() RETURNS void LANGUAGE sql SECURITY DEFINER
        SET search_path FROM CURRENT AS $$ DROP INDEX IF EXISTS embeddings_search $$;
    REVOKE EXECUTE ON FUNCTION gallery_create_search_index(integer), gallery_drop_search_index() FROM PUBLIC;
    """,
)
#: What each role may do (`grant_roles`): matchers read and LISTEN (which needs no grant); enrolment and
#: `tools/gallery.py` also write, but only through rows (no DDL, no change-log rewriting: the log is append-only).
READ_TABLES = ("gallery_encoder", "identities", "embeddings", "changes", "schema_migrations")
WRITE_GRANTS = (("INSERT, UPDATE, DELETE", "gallery_encoder"), ("INSERT, UPDATE, DELETE", "identities"),
                ("INSERT, UPDATE, DELETE", "embeddings"), ("INSERT", "changes"))
WRITE_FUNCTIONS = ("gallery_create_search_index(integer)", "gallery_drop_search_index()")


def migrate(conn: psycopg.Connection, *, create: bool, location: str) -> None:
    """Apply the missing MIGRATIONS (autocommit connection). `create=False` refuses a database without a gallery."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
        if not exists and not create:
            raise GalleryError(f"gallery not found: {location} holds no gallery (enrol someone with tools/enroll.py "
                               f"first)")
        if not exists:  # a role without CREATE may open a gallery: even IF NOT EXISTS needs the privilege
            conn.execute("CREATE TABLE schema_migrations "
                         "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        applied = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        if applied > len(MIGRATIONS):
            raise GalleryError(f"{location}: gallery schema {applied}, this build reads up to {len(MIGRATIONS)}")
        for version, step in enumerate(MIGRATIONS[applied:], start=applied + 1):
            with conn.transaction():
                conn.execute(step)
                conn.execute("INSERT INTO schema_migrations(version) VALUES (%s)", (version,))
            log.info("gallery %s: schema migrated to version %d", location, version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def grant_roles(conn: psycopg.Connection, *, reader: str, writer: str,
                passwords: dict[str, str | None] | None = None) -> None:
    """Create the login roles `reader` (matchers: SELECT, LISTEN) and `writer` (enrolment: also INSERT, UPDATE,
    DELETE of rows) if missing, and grant them this database's gallery; run as its owner (autocommit connection).
    A role gets a password only when `passwords` gives one (none: it cannot log in by password)."""
    database = conn.execute("SELECT current_database()").fetchone()[0]
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    with conn.transaction():
        for role in (reader, writer):
            name = sql.Identifier(role)
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(name))
            if (passwords or {}).get(role):
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(passwords[role])))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), name))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), name))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.SQL(", ").join(map(sql.Identifier, READ_TABLES)), name))
        for privileges, table in WRITE_GRANTS:
            conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privileges), sql.Identifier(table),
                                                                sql.Identifier(writer)))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
            sql.SQL(", ").join(map(sql.SQL, WRITE_FUNCTIONS)), sql.Identifier(writer)))


class PostgresGalleryStore(GalleryExchange):
    """`GalleryStore`'s methods on a PostgreSQL database shared by many hosts (see the module docstring).

    `path` is the URL without its password, for messages. Connections come from a small pool that replaces broken
    ones, so a store outlives a server restart; database errors surface as `GalleryError`.
    """

    def __init__(self, url: str, *, create: bool = True, connect_timeout_s: float = 10.0) -> None:
        self.url = url
        self.path = redact_url(url)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=int(connect_timeout_s), **LIVENESS) as conn:
                migrate(conn, create=create, location=self.path)
        except psycopg.Error as exc:
            raise GalleryError(f"cannot open gallery {self.path}: {exc}") from exc
        self._pool = ConnectionPool(url, min_size=1, max_size=2, open=False, name="gallery", timeout=connect_timeout_s,
                                    kwargs={"autocommit": True, "connect_timeout": int(connect_timeout_s), **LIVENESS},
                                    configure=register_vector, check=ConnectionPool.check_connection)
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise GalleryError(f"cannot open gallery {self.path}: {exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.InsufficientPrivilege as exc:
            raise GalleryError(f"gallery {self.path}: {exc} (this URL's database user may not do that: matchers "
                               f"read with a read-only role, enrol with the writer role's URL)") from exc
        except psycopg.Error as exc:
            raise GalleryError(f"gallery {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """One write transaction, serialised with every other writer's (see "Changes" above)."""
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield conn

    @staticmethod
    def _log_change(conn: psycopg.Connection, kind: str, identity_id: uuid.UUID,
                    embedding_ids: Sequence[uuid.UUID] = ()) -> None:
        seq = conn.execute("INSERT INTO changes(kind, identity_id, embedding_ids) VALUES (%s, %s, %s) RETURNING seq",
                           (kind, identity_id, list(embedding_ids))).fetchone()[0]
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))

    # --- the encoder ---------------------------------------------------------------------------------------------
    def _encoder_row(self) -> tuple[str, int, int] | None:
        with self._connection() as conn:
            return conn.execute("SELECT name, embedding_dim, parts FROM gallery_encoder").fetchone()

    @property
    def encoder(self) -> str | None:
        """Name of the encoder every embedding here came from (None while empty)."""
        row = self._encoder_row()
        return row[0] if row else None

    @property
    def parts(self) -> int:
        row = self._encoder_row()
        return row[2] if row else 1

    @property
    def embedding_dim(self) -> int | None:
        row = self._encoder_row()
        return row[1] if row else None

    def data_version(self) -> int:
        """The last change's sequence number: changes whenever any host commits."""
        with self._connection() as conn:
            return conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]

    def _check_encoder(self, conn: psycopg.Connection, encoder: str, dim: int, parts: int) -> None:
        row = conn.execute("SELECT name, embedding_dim FROM gallery_encoder").fetchone()
        if row is None:
            conn.execute("INSERT INTO gallery_encoder(name, embedding_dim, parts) VALUES (%s, %s, %s)",
                         (encoder, dim, parts))
            if dim <= HALFVEC_HNSW_MAX_DIM:
                conn.execute("SELECT gallery_create_search_index(%s)", (dim,))
        elif row[0] != encoder:
            raise GalleryError(f"{self.path} holds embeddings of encoder {row[0]}; refusing embeddings of {encoder} "
                               f"(use another gallery, or re-enrol everyone with the new encoder)")
        elif row[1] != dim:
            raise GalleryError(f"{self.path}: embeddings are {row[1]}-D, got {dim}-D")

    # --- writing -------------------------------------------------------------------------------------------------
    def check_can_add(self, name: str, encoder: str) -> None:
        """Fail now, before a walk is recorded, if `add(name, ..., encoder=encoder)` would fail: a blank name,
        embeddings of another encoder, or a database this user cannot write (a read-only replica, no grant)."""
        checked_name(name)
        current = self.encoder
        if current is not None and current != encoder:
            raise GalleryError(f"{self.path} holds embeddings of encoder {current}; this pipeline's is {encoder} "
                               f"(use another gallery, or re-enrol everyone with the new encoder)")
        with self._connection() as conn:
            read_only = conn.execute("SHOW transaction_read_only").fetchone()[0] == "on"
            granted = conn.execute("SELECT bool_and(has_table_privilege(t, 'INSERT')) "
                                   "FROM unnest(ARRAY['identities', 'embeddings', 'changes']) t").fetchone()[0]
        if read_only or not granted:
            raise GalleryError(f"cannot write gallery {self.path}: "
                               f"{'read-only server' if read_only else 'no INSERT privilege'}")

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
        embedding_ids: Sequence[uuid.UUID] | None = None,
    ) -> int:
        """Add embeddings (k, D) to `name` (created if new) in one transaction; returns how many were added.

        `embedding_ids` (made here when not given) make the enrolment idempotent: ids already stored are skipped,
        and a commit whose acknowledgement was lost with the connection is retried once with the same ids.
        """
        vectors = checked_vectors(name, vectors)
        name = checked_name(name)
        if vectors.shape[1] % parts:
            raise GalleryError(f"{vectors.shape[1]}-D embeddings do not split into {parts} parts")
        ids = list(embedding_ids) if embedding_ids is not None else [uuid.uuid4() for _ in vectors]
        if len(ids) != len(vectors):
            raise GalleryError(f"{len(ids)} embedding ids for {len(vectors)} embeddings")
        searchable = normalise_parts(vectors, parts)
        rows = [(embedding_id, Vector(v), HalfVector(s), source, stream, track_id, frames)
                for embedding_id, v, s in zip(ids, vectors, searchable)]
        try:
            return self._insert(name, anonymous, rows, encoder, vectors.shape[1], parts)
        except GalleryError as exc:
            if not isinstance(exc.__cause__, psycopg.OperationalError) or isinstance(exc.__cause__, PoolTimeout):
                raise
            log.warning("gallery %s: enrolment of %s interrupted (%s); retrying with the same ids", self.path, name,
                        exc.__cause__)
            return self._insert(name, anonymous, rows, encoder, vectors.shape[1], parts)

    def _insert(self, name: str, anonymous: bool, rows: list[tuple], encoder: str, dim: int, parts: int) -> int:
        added: list[uuid.UUID] = []
        with self._write() as conn:
            self._check_encoder(conn, encoder, dim, parts)
            conn.execute("INSERT INTO identities(id, name, anonymous) VALUES (%s, %s, %s) "
                         "ON CONFLICT (name) DO NOTHING", (uuid.uuid4(), name, anonymous))
            identity_id = conn.execute("SELECT id FROM identities WHERE name = %s", (name,)).fetchone()[0]
            cursor = conn.cursor()
            cursor.executemany(
                "INSERT INTO embeddings(id, identity_id, vector, search, source, stream, track_id, frames) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                [(row[0], identity_id, *row[1:]) for row in rows], returning=True)
            for _ in cursor.results():
                added.extend(embedding_id for (embedding_id,) in cursor.fetchall())
            if not added:  # every id already stored: a repeated enrolment changes nothing, not even the log
                raise psycopg.Rollback()
            self._log_change(conn, "add", identity_id, added)
        return len(added)

    def rename(self, old: str, new: str) -> None:
        new = checked_name(new)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM identities WHERE name = %s", (new,)).fetchone():
                raise GalleryError(f"an identity named {new!r} already exists")
            row = conn.execute("UPDATE identities SET name = %s, anonymous = false WHERE name = %s RETURNING id",
                               (new, old)).fetchone()
            if row is None:
                raise GalleryError(f"no identity named {old!r} in {self.path}")
            self._log_change(conn, "rename", row[0])

    def delete(self, name: str) -> int:
        """Remove an identity and erase its embeddings (biometric data: the rows go, and the change log never held
        them); returns how many embeddings went with it."""
        with self._write() as conn:
            row = conn.execute("SELECT id FROM identities WHERE name = %s", (name,)).fetchone()
            if row is None:
                raise GalleryError(f"no identity named {name!r} in {self.path}")
            count = conn.execute("DELETE FROM embeddings WHERE identity_id = %s", row).rowcount
            conn.execute("DELETE FROM identities WHERE id = %s", row)
            if not conn.execute("SELECT 1 FROM identities LIMIT 1").fetchone():
                conn.execute("DELETE FROM gallery_encoder")
                conn.execute("SELECT gallery_drop_search_index()")
            self._log_change(conn, "delete", row[0])
        return count

    # --- reading -------------------------------------------------------------------------------------------------
    def identities(self) -> list[IdentitySummary]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT i.name, count(e.id), i.anonymous, extract(epoch FROM min(e.enrolled_at))::float8, "
                "extract(epoch FROM max(e.enrolled_at))::float8, "
                "coalesce(array_agg(DISTINCT e.source) FILTER (WHERE e.source <> ''), '{}') "
                "FROM identities i LEFT JOIN embeddings e ON e.identity_id = i.id "
                "GROUP BY i.id ORDER BY i.name COLLATE \"C\"").fetchall()
        return [IdentitySummary(name, count, anon, first or 0.0, last or 0.0, tuple(sources))
                for name, count, anon, first, last, sources in rows]

    def snapshot(self) -> GallerySnapshot:
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            encoder = conn.execute("SELECT name, embedding_dim, parts FROM gallery_encoder").fetchone()
            rows = conn.execute("SELECT i.name, i.anonymous, e.vector FROM embeddings e "
                                "JOIN identities i ON i.id = e.identity_id ORDER BY i.name COLLATE \"C\", e.ordinal",
                                binary=True).fetchall()
        grouped: dict[str, tuple[bool, list[NDArray[np.float32]]]] = {}
        for name, anonymous, vector in rows:
            grouped.setdefault(name, (anonymous, []))[1].append(vector.to_numpy())
        return _snapshot(grouped, encoder)

    def preselect(self, query: NDArray[np.float32], limit: int) -> list[str]:
        """Names of up to `limit` identities whose embeddings the HNSW index finds nearest to `query` (D,): an
        approximate shortlist for the exact numpy decision on very large galleries, never the decision itself."""
        row = self._encoder_row()
        if row is None:
            return []
        _, dim, parts = row
        if dim > HALFVEC_HNSW_MAX_DIM:
            raise GalleryError(f"{self.path}: {dim}-D embeddings exceed the {HALFVEC_HNSW_MAX_DIM}-D of an HNSW index")
        target = HalfVector(normalise_parts(np.asarray(query, np.float32)[None], parts)[0])
        nearest = max(40, 8 * limit)
        with self._connection() as conn, conn.transaction():
            conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(min(nearest, 1000))))
            rows = conn.execute(sql.SQL(
                "SELECT i.name FROM (SELECT identity_id, search::halfvec({dim}) <#> %s::halfvec({dim}) AS distance "
                "FROM embeddings ORDER BY 2 LIMIT %s) n JOIN identities i ON i.id = n.identity_id "
                "GROUP BY i.name ORDER BY min(n.distance) LIMIT %s").format(dim=sql.Literal(dim)),
                (target, nearest, limit)).fetchall()
        return [name for (name,) in rows]

    def _held_vectors(self, name: str) -> set[bytes]:
        with self._connection() as conn:
            rows = conn.execute("SELECT e.vector FROM embeddings e JOIN identities i ON i.id = e.identity_id "
                                "WHERE i.name = %s", (name,)).fetchall()
        return {vector.to_numpy().tobytes() for (vector,) in rows}

    def grant_roles(self, *, reader: str, writer: str, passwords: dict[str, str | None] | None = None) -> None:
        """`grant_roles` on this gallery's database (this URL's user must own the gallery and may create roles)."""
        with self._connection() as conn:
            grant_roles(conn, reader=reader, writer=writer, passwords=passwords)

    def close(self) -> None:
        self._pool.close()


def _snapshot(grouped: dict[str, tuple[bool, list[NDArray[np.float32]]]],
              encoder: tuple[str, int, int] | None) -> GallerySnapshot:
    """A `GallerySnapshot` from {name: (anonymous, vectors)} in name order, and the encoder record."""
    name, dim, parts = encoder if encoder else (None, 0, 1)
    names = sorted(n for n, (_, vectors) in grouped.items() if vectors)
    counts = [len(grouped[n][1]) for n in names]
    vectors = (np.stack([v for n in names for v in grouped[n][1]]).astype(np.float32, copy=False) if names
               else np.zeros((0, dim), np.float32))
    owners = np.repeat(np.arange(len(names), dtype=np.int64), counts)
    return GallerySnapshot(tuple(names), vectors, owners, name, parts, sum(grouped[n][0] for n in names))


@dataclass
class _HeldIdentity:
    name: str
    anonymous: bool
    embeddings: dict[uuid.UUID, tuple[int, NDArray[np.float32]]] = field(default_factory=dict)  # id: (ordinal, v)


class GalleryFollower:
    """An in-memory copy of a PostgreSQL gallery, kept current from its change log by a background thread.

    `latest()` returns (sequence number applied, `GallerySnapshot`) without touching the network. On a lost
    connection the copy keeps being served, the outage is logged once (a warning), and the thread reconnects with
    a back-off doubling from `backoff_s` to `max_backoff_s`, then catches up on everything committed meanwhile.
    Besides each hint it re-reads the log every `recheck_s`: an idle LISTEN sends nothing, and a query is what
    brings a connection that died without a word (`LIVENESS`) to an error.
    """

    def __init__(self, url: str, *, recheck_s: float = 5.0, backoff_s: float = 0.25, max_backoff_s: float = 10.0,
                 connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.location = redact_url(url)
        self.recheck_s = recheck_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self._held: dict[uuid.UUID, _HeldIdentity] = {}
        self._latest: tuple[int, GallerySnapshot] | None = None
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="gallery-follower", daemon=True)
        self._thread.start()

    def latest(self) -> tuple[int, GallerySnapshot] | None:
        """The newest complete copy and the change it reflects; None until the first load."""
        return self._latest

    def wait_until_loaded(self, timeout_s: float) -> bool:
        return self._loaded.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._loaded.is_set() and self._outage_since is None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.connect_timeout_s + 2.0)

    # --- the thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff_s
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=int(self.connect_timeout_s),
                                     **LIVENESS) as conn:
                    register_vector(conn)
                    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                    conn.read_only = True
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self._catch_up(conn)
                    if self._outage_since is not None:
                        log.info("gallery %s reachable again after %.1f s: caught up to change %d", self.location,
                                 time.monotonic() - self._outage_since, self._latest[0] if self._latest else 0)
                        self._outage_since = None
                    delay = self.backoff_s
                    self._follow(conn)
            except psycopg.Error as exc:
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    held = len(self._latest[1].names) if self._latest else 0
                    log.warning("gallery %s unreachable (%s): serving the %d identities held in memory, reconnecting",
                                self.location, str(exc).strip().splitlines()[0] if str(exc).strip() else exc, held)
                else:
                    log.debug("gallery %s still unreachable: %s", self.location, exc)
                self._stop.wait(delay)
                delay = min(2 * delay, self.max_backoff_s)

    def _follow(self, conn: psycopg.Connection) -> None:
        """Catch up on each hint, and every `recheck_s` regardless, until stopped or the connection fails."""
        checked_s = time.monotonic()
        while not self._stop.is_set():
            hinted = any(True for _ in conn.notifies(timeout=0.5, stop_after=1))
            if hinted or time.monotonic() - checked_s >= self.recheck_s:
                self._catch_up(conn)
                checked_s = time.monotonic()

    def _catch_up(self, conn: psycopg.Connection) -> None:
        """Apply every change after the last one applied (everything on the first call), from one consistent
        snapshot of the database, and publish the result."""
        first = self._latest is None
        with conn.transaction():
            if first:
                seq = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
                identities = conn.execute("SELECT id, name, anonymous FROM identities").fetchall()
                embeddings = conn.execute("SELECT id, identity_id, ordinal, vector FROM embeddings",
                                          binary=True).fetchall()
                touched: set[uuid.UUID] = set()
            else:
                changes = conn.execute("SELECT seq, identity_id, embedding_ids FROM changes WHERE seq > %s "
                                       "ORDER BY seq", (self._latest[0],)).fetchall()
                if not changes:
                    return
                seq = changes[-1][0]
                touched = {identity_id for _, identity_id, _ in changes}
                added = [embedding_id for *_, ids in changes for embedding_id in ids]
                identities = conn.execute("SELECT id, name, anonymous FROM identities WHERE id = ANY(%s)",
                                          (list(touched),)).fetchall()
                embeddings = conn.execute("SELECT id, identity_id, ordinal, vector FROM embeddings WHERE id = ANY(%s)",
                                          (added,), binary=True).fetchall()
            encoder = conn.execute("SELECT name, embedding_dim, parts FROM gallery_encoder").fetchone()
        for identity_id in touched - {row[0] for row in identities}:  # deleted since
            self._held.pop(identity_id, None)
        for identity_id, name, anonymous in identities:
            held = self._held.setdefault(identity_id, _HeldIdentity(name, anonymous))
            held.name, held.anonymous = name, anonymous
        for embedding_id, identity_id, ordinal, vector in embeddings:
            self._held[identity_id].embeddings[embedding_id] = (ordinal, vector.to_numpy())
        grouped = {held.name: (held.anonymous, [v for _, v in sorted(held.embeddings.values(), key=lambda e: e[0])])
                   for held in self._held.values()}
        self._latest = (seq, _snapshot(grouped, encoder))
        self._loaded.set()
