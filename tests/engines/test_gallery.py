"""The gallery store (SQLite) and open-set matching: encoder safety, exchange, durability under SIGKILL, walk-level
decisions."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from engines.gallery import GalleryError, GallerySnapshot, GalleryStore, resolve_gallery_path
from engines.matching import UNKNOWN, CameraMeans, GalleryIndex, Match, TrackEvidence, decide_identity, normalise_parts
from tests.conftest import REPO_ROOT

DIM, PARTS = 64, 4


def vectors(seed: int, count: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)


@pytest.fixture
def gallery(tmp_path: Path):
    store = GalleryStore(tmp_path / "gallery.sqlite")
    yield store
    store.close()


def test_add_snapshot_and_nearest_identity(gallery: GalleryStore):
    gallery.add("alice", vectors(1), encoder="enc@1", parts=PARTS, source="a.mp4", track_id=3, frames=60)
    gallery.add("bob", vectors(2), encoder="enc@1", parts=PARTS)
    index = GalleryIndex(gallery.snapshot())
    query = vectors(1)[1:2] + 0.01
    matches = index.query(query, top_k=2)[0]
    assert [m.name for m in matches] == ["alice", "bob"]
    assert matches[0].distance < 1e-3 < matches[1].distance
    assert decide_identity(matches, accept_distance=0.2)[0] == "alice"
    assert decide_identity(index.query(vectors(9)[:1])[0], accept_distance=0.2)[0] == UNKNOWN


def test_refuses_embeddings_of_another_encoder(gallery: GalleryStore):
    gallery.add("alice", vectors(1), encoder="enc@1", parts=PARTS)
    with pytest.raises(GalleryError, match="enc@2"):
        gallery.add("bob", vectors(2), encoder="enc@2", parts=PARTS)
    assert [i.name for i in gallery.identities()] == ["alice"]


def test_rename_delete_export_import(gallery: GalleryStore, tmp_path: Path):
    gallery.add("anon-0001", vectors(1), encoder="enc@1", parts=PARTS, anonymous=True)
    gallery.add("bob", vectors(2, 5), encoder="enc@1", parts=PARTS)
    gallery.rename("anon-0001", "carol")
    with pytest.raises(GalleryError, match="already exists"):
        gallery.rename("carol", "bob")
    assert gallery.export(tmp_path / "backup.npz") == (tmp_path / "backup.npz", 8)
    assert gallery.delete("bob") == 5
    with pytest.raises(GalleryError, match="no identity named 'bob'"):
        gallery.delete("bob")
    other = GalleryStore(tmp_path / "other.sqlite")
    assert other.import_(tmp_path / "backup.npz") == 8
    assert {(i.name, i.embeddings, i.anonymous) for i in other.identities()} == {("carol", 3, False), ("bob", 5, False)}
    imported = other.snapshot()
    carol = imported.names.index("carol")
    np.testing.assert_array_equal(imported.vectors[imported.owners == carol], gallery.snapshot().vectors)
    other.close()


def test_path_from_flag_then_environment_then_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("GAITSTREAM_GALLERY", str(tmp_path / "env.sqlite"))
    assert resolve_gallery_path(tmp_path / "flag.sqlite") == tmp_path / "flag.sqlite"
    assert resolve_gallery_path(None) == tmp_path / "env.sqlite"
    monkeypatch.delenv("GAITSTREAM_GALLERY")
    assert resolve_gallery_path(None) == Path("gallery.sqlite")


def test_not_a_gallery_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(GalleryError, match="cannot open gallery"):
        GalleryStore(path)


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from engines.gallery import GalleryStore
    store = GalleryStore(sys.argv[1])
    rng = np.random.default_rng(0)
    for i in range(100000):
        store.add(f"person-{i:05d}", rng.normal(size=(10, 256)).astype(np.float32), encoder="enc@1", parts=4)
        print(i, flush=True)
""")


def test_sigkill_while_enrolling_keeps_every_committed_identity(tmp_path: Path):
    path = tmp_path / "gallery.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    committed = [int(writer.stdout.readline()) for _ in range(40)]  # 40 commits reported, more under way
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    committed += [int(line) for line in writer.stdout.read().split()]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = GalleryStore(path)
    names = {i.name: i.embeddings for i in store.identities()}
    store.close()
    for i in committed:
        assert names.get(f"person-{i:05d}") == 10, f"person-{i:05d} was committed before the kill"
    assert all(count == 10 for count in names.values()), "a half-written identity"


def test_a_name_needs_a_margin_over_the_runner_up():
    close_pair = [Match("alice", 0.20), Match("bob", 0.21)]
    assert decide_identity(close_pair, accept_distance=0.3)[0] == "alice"  # no margin asked
    assert decide_identity(close_pair, accept_distance=0.3, margin_ratio=0.9) == (UNKNOWN, 0.0)
    clear = [Match("alice", 0.10), Match("bob", 0.40)]
    name, confidence = decide_identity(clear, accept_distance=0.3, margin_ratio=0.9)
    assert name == "alice" and confidence == pytest.approx(2 / 3)
    assert decide_identity([Match("alice", 0.25)], accept_distance=0.3, margin_ratio=0.5)[0] == "alice"
    assert decide_identity(clear, accept_distance=0.05)[0] == UNKNOWN


def test_track_evidence_is_the_frame_weighted_mean_of_normalised_windows():
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(3, DIM)).astype(np.float32) * np.array([[1.0], [50.0], [0.1]], np.float32)
    evidence = TrackEvidence(PARTS, now_s=0.0)
    for vector, frames in zip(windows, (30, 30, 15)):
        evidence.add(vector, frames, now_s=1.0)
    unit = normalise_parts(windows, PARTS)
    expected = (30 * unit[0] + 30 * unit[1] + 15 * unit[2]) / 75  # the large window does not dominate
    assert np.allclose(evidence.embedding(), expected, atol=1e-6)
    assert (evidence.windows, evidence.frames, evidence.last_seen_s) == (3, 75, 1.0)


def test_two_stage_search_finds_what_the_exact_search_finds_in_any_row_order():
    """A gallery past `exact_max_embeddings` is searched through projected centroids first; it must still find
    each person, and the stores' row order (grouped by identity or not) must not matter."""
    rng = np.random.default_rng(5)
    people = rng.normal(size=(300, DIM)).astype(np.float32)
    owners = np.repeat(np.arange(300), 3)
    enrolled = people[owners] + 0.3 * rng.normal(size=(900, DIM)).astype(np.float32)
    names = tuple(f"p{i}" for i in range(300))
    shuffle = rng.permutation(900)
    queries = people[:50] + 0.3 * rng.normal(size=(50, DIM)).astype(np.float32)
    exact = GalleryIndex(GallerySnapshot(names, enrolled, owners, "enc@1", PARTS))
    assert exact.strategy == "exact"
    best = [row[0] for row in exact.query(queries, 3)]
    assert [m.name for m in best] == list(names[:50])
    results = []
    for order in (np.arange(900), shuffle):
        index = GalleryIndex(GallerySnapshot(names, enrolled[order], owners[order], "enc@1", PARTS),
                             exact_max_embeddings=100)
        assert index.strategy == "two-stage"
        results.append([[(m.name, round(m.distance, 5)) for m in row] for row in index.query(queries, 3)])
        assert [row[0] for row in results[-1]] == [(m.name, round(m.distance, 5)) for m in best]
    assert results[0] == results[1]


def test_centring_removes_what_a_camera_adds_to_everyone():
    """Ten people enrolled in one place; a second camera adds one large offset to every walk it sees. Raw, every
    probe lands on whoever lies nearest the offset; centred by each side's own mean, everyone is found again."""
    rng = np.random.default_rng(3)
    people = rng.normal(size=(10, DIM)).astype(np.float32)
    snapshot = GallerySnapshot(tuple(f"p{i}" for i in range(10)), normalise_parts(people, PARTS),
                               np.arange(10), "enc@1", PARTS)
    offset = 8.0 * normalise_parts(rng.normal(size=(1, DIM)).astype(np.float32), PARTS)
    walks = normalise_parts(people + 0.05 * rng.normal(size=people.shape).astype(np.float32), PARTS) + offset
    raw = [row[0].name for row in GalleryIndex(snapshot).query(walks, 1)]
    means = CameraMeans(min_walks=10)
    assert [means.add("hall", walk, "enc@1") for walk in walks][-1] is True  # usable from the tenth walk
    centred = GalleryIndex(snapshot, centred=True).query(walks, 1, offset=means.mean("hall", "enc@1"))
    assert [row[0].name for row in centred] == list(snapshot.names)
    assert sum(a == b for a, b in zip(raw, snapshot.names)) <= 5


def test_a_camera_mean_is_withheld_until_enough_walks():
    means = CameraMeans(min_walks=3)
    assert not means.add("door", np.ones(4, np.float32), "enc@1") and means.mean("door", "enc@1") is None
    means.add("door", np.zeros(4, np.float32), "enc@1")
    assert means.add("door", np.full(4, 2.0, np.float32), "enc@1")
    assert np.allclose(means.mean("door", "enc@1"), 1.0) and means.mean("yard", "enc@1") is None
    assert means.mean("door", "enc@2") is None  # another encoder's walks lie elsewhere


def test_camera_means_survive_a_restart_but_not_a_new_encoder(tmp_path: Path):
    state = tmp_path / "cameras.npz"
    means = CameraMeans(min_walks=2, path=state)
    for value in (1.0, 3.0):
        means.add("door", np.full(4, value, np.float32), "enc@1")
    means.add("yard", np.ones(4, np.float32), "enc@1")
    restarted = CameraMeans(min_walks=2, path=state)
    assert np.allclose(restarted.mean("door", "enc@1"), 2.0) and restarted.counts == {"door": 2, "yard": 1}
    restarted.add("door", np.zeros(8, np.float32), "enc@2")  # new weights: the old statistics mean nothing
    assert restarted.counts == {"door": 1} and CameraMeans(2, path=state).encoder == "enc@2"


def test_camera_statistics_that_cannot_be_written_do_not_stop_matching(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture):
    state = tmp_path / "new" / "cameras.npz"
    means = CameraMeans(min_walks=1, path=state)  # its folder is made at start
    state.mkdir()  # now nothing can be written there
    assert means.add("door", np.ones(4, np.float32), "enc@1") and means.mean("door", "enc@1") is not None
    assert "cannot keep camera statistics" in caplog.text


def test_unreadable_camera_statistics_are_relearnt(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    state = tmp_path / "cameras.npz"
    state.write_bytes(b"not an npz")
    means = CameraMeans(min_walks=1, path=state)
    assert means.counts == {} and "unreadable" in caplog.text
    means.add("door", np.ones(4, np.float32), "enc@1")
    assert CameraMeans(min_walks=1, path=state).counts == {"door": 1}


def test_names_must_not_be_blank_and_vectors_must_be_finite(gallery: GalleryStore):
    gallery.add("bob", vectors(1), encoder="enc@1", parts=PARTS)
    with pytest.raises(GalleryError, match="must not be empty"):
        gallery.rename("bob", "  ")
    bad = vectors(2)
    bad[1, 3] = np.nan
    with pytest.raises(GalleryError, match="NaN"):
        gallery.add("carol", bad, encoder="enc@1", parts=PARTS)
    assert [i.name for i in gallery.identities()] == ["bob"]


def test_export_makes_its_folder_and_names_the_file_it_wrote_and_import_is_idempotent(gallery: GalleryStore,
                                                                                       tmp_path: Path):
    gallery.add("bob", vectors(1), encoder="enc@1", parts=PARTS)
    written, count = gallery.export(tmp_path / "new" / "folder" / "backup")
    assert written == tmp_path / "new" / "folder" / "backup.npz" and written.is_file() and count == 3
    assert gallery.import_(written) == 0  # everything is already there
    other = GalleryStore(tmp_path / "other.sqlite")
    assert other.import_(written) == 3 and other.import_(written) == 0
    assert [(i.name, i.embeddings) for i in other.identities()] == [("bob", 3)]
    other.close()


def test_gallery_tool_takes_gallery_after_the_command_and_reads_the_configs(tmp_path: Path):
    path = tmp_path / "from_config.sqlite"
    store = GalleryStore(path)
    store.add("bob", vectors(1), encoder="enc@1", parts=PARTS)
    store.close()
    config = tmp_path / "site.yaml"
    config.write_text(f"extends: {REPO_ROOT / 'configs' / 'pipeline' / 'default.yaml'}\n"
                      f"stages:\n  match:\n    gallery: {path}\n")
    tool = [sys.executable, str(REPO_ROOT / "tools" / "gallery.py")]
    after = subprocess.run([*tool, "list", "--gallery", str(path)], capture_output=True, text=True, timeout=60)
    assert after.returncode == 0 and "bob\t3 embeddings" in after.stdout, after.stderr
    from_config = subprocess.run([*tool, "list", "--config", str(config)], capture_output=True, text=True,
                                 timeout=60, cwd=tmp_path)
    assert from_config.returncode == 0 and str(path) in from_config.stdout, from_config.stderr
