"""`tools/eval.py` end to end on a few real CASIA-B subjects, and an independent plain-numpy recomputation of its
Rank-1 from the embeddings it dumps."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.gait.gaitbase import GaitBase, GaitBaseConfig
from engines.gait.weights import save_weights
from tools import eval as eval_tool


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, casia_b: Path) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    save_weights(GaitBase(GaitBaseConfig(channels=(4, 8, 8, 16), part_dim=8, num_classes=4)), folder / "w.pt",
                 name="gaitbase-tiny", metadata={})
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = eval_tool.main(["--weights", str(folder / "w.pt"), "--backend", "torch", "--device", "cpu",
                               "--threads", "1", "--dataset", str(casia_b / "sils-64x64-bin"),
                               "--subjects", "075-077", "--max-frames", "8", "--json", str(folder / "report.json"),
                               "--dump-embeddings", str(folder / "emb.npz"), "--open-set", "--no-progress"])
    assert code == 0, stdout.getvalue()
    return folder, stdout.getvalue()


def independent_rank1(path: Path, probe_conditions: tuple[str, ...]) -> dict[str, float]:
    """CASIA-B Rank-1 per probe view, written from the protocol's text with loops and numpy only."""
    data = np.load(path)
    emb, subjects, conditions, views = data["embeddings"], data["subjects"], data["conditions"], data["views"]
    gallery_conditions = ("nm-01", "nm-02", "nm-03", "nm-04")
    per_view = {}
    for probe_view in sorted(set(views.tolist())):
        accuracies = []
        for gallery_view in sorted(set(views.tolist())):
            if gallery_view == probe_view:
                continue
            g = [i for i in range(len(emb)) if conditions[i] in gallery_conditions and views[i] == gallery_view]
            p = [i for i in range(len(emb)) if conditions[i] in probe_conditions and views[i] == probe_view]
            correct = 0
            for i in p:
                distances = [np.mean(np.sqrt(((emb[i] - emb[j]) ** 2).sum(axis=1))) for j in g]
                correct += subjects[g[int(np.argmin(distances))]] == subjects[i]
            accuracies.append(100.0 * correct / len(p))
        per_view[probe_view] = float(np.mean(accuracies))
    return per_view


def test_dump_layout(evaluated: tuple[Path, str]) -> None:
    folder, _ = evaluated
    data = np.load(folder / "emb.npz")  # no pickle needed: plain float and str arrays
    embeddings = data["embeddings"]
    assert embeddings.dtype == np.float32 and embeddings.shape == (330, 16, 8)
    for key in ("subjects", "conditions", "views"):
        assert data[key].dtype.kind == "U" and data[key].shape == (330,)
    assert set(data["subjects"].tolist()) == {"075", "076", "077"}


def test_report_and_table(evaluated: tuple[Path, str]) -> None:
    folder, out = evaluated
    report = json.loads((folder / "report.json").read_text())
    assert report["sequences"] == 330 and report["encoder"].startswith("gaitbase-tiny@")
    assert set(report["casia_b_rank1"]) == {"NM", "BG", "CL"}
    assert {"rank1", "rank5", "mAP", "mINP"} <= set(report["retrieval"]) & set(report["retrieval_part_cosine"])
    assert [row["far"] for row in report["open_set"]["thresholds"]] == [0.01, 0.001]
    assert {"genuine", "impostor", "histogram", "equal_error_rate"} <= set(report["open_set"])
    header = next(line for line in out.splitlines() if line.startswith("set"))
    assert header.split() == ["set", *[f"{18 * i:03d}" for i in range(11)], "mean"]
    assert "FAR 1%: accept_distance" in out


@pytest.mark.parametrize(("probe_set", "conditions"), [("NM", ("nm-05", "nm-06")), ("CL", ("cl-01", "cl-02"))])
def test_rank1_recomputed_with_plain_numpy(evaluated: tuple[Path, str], probe_set: str,
                                           conditions: tuple[str, ...]) -> None:
    folder, _ = evaluated
    report = json.loads((folder / "report.json").read_text())["casia_b_rank1"][probe_set]
    recomputed = independent_rank1(folder / "emb.npz", conditions)
    assert report["per_view"] == pytest.approx(recomputed, abs=1e-9)
    assert report["mean"] == pytest.approx(np.mean(list(recomputed.values())), abs=1e-9)


def test_from_embeddings_reproduces_the_report(evaluated: tuple[Path, str]) -> None:
    folder, _ = evaluated
    with contextlib.redirect_stdout(io.StringIO()):
        code = eval_tool.main(["--from-embeddings", str(folder / "emb.npz"), "--json", str(folder / "again.json")])
    assert code == 0
    first, again = (json.loads((folder / name).read_text()) for name in ("report.json", "again.json"))
    for key in ("casia_b_rank1", "retrieval", "open_set"):
        assert again[key] == first[key]
