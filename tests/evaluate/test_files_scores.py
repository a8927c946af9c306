"""Scoring any model's output files as published results are scored: any real-valued scores, failed
rows, finding sets, operating points fitted on validation files, and readers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logit
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from conftest import assert_one_line_error, tiny_artifact
from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.files import score_files
from cxrkit.evaluate.metrics import fit_threshold
from cxrkit.evaluate.readers import compare_with_readers

FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def _truth(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(FINDINGS))) < 0.3).astype(int)
    paths = [f"test/patient{i // 2:05d}/study1/view{i % 2 + 1}_frontal.jpg" for i in range(n)]
    lab = pd.DataFrame(y, columns=FINDINGS).assign(Path=paths)[["Path", *FINDINGS]]
    return lab, y, rng


# ten "published models", each a way real submissions write their scores
SUBMISSIONS = {
    "probabilities": lambda p, rng: p,
    "ensemble mean past 1": lambda p, rng: (
        (p + np.clip(p + rng.normal(0, 0.05, p.shape), 0, 1.2)) / 2 * 1.1
    ),
    "logits": lambda p, rng: logit(np.clip(p, 1e-6, 1 - 1e-6)),
    "ranks": lambda p, rng: np.apply_along_axis(rankdata, 0, p),
    "percent": lambda p, rng: 100 * p,
    "negated distance": lambda p, rng: -((1 - p) ** 2),
    "log odds x 3": lambda p, rng: 3 * logit(np.clip(p, 1e-6, 1 - 1e-6)) + 7,
    "rounded to 2 places": lambda p, rng: np.round(p, 2),
    "sum of two heads": lambda p, rng: p + np.sqrt(p),
    "z-scores": lambda p, rng: (p - p.mean(0)) / p.std(0),
}


@pytest.mark.parametrize("name", sorted(SUBMISSIONS))
def test_leaderboard_files_score_as_sklearn(tmp_path, name):
    lab, y, rng = _truth()
    p = np.clip(y * 0.35 + rng.random(y.shape) * 0.65, 0, 1)
    scores = SUBMISSIONS[name](p, rng)
    pred = pd.DataFrame(scores, columns=FINDINGS).assign(Path=lab["Path"])
    pred.to_csv(tmp_path / "pred.csv", index=False)
    lab.to_csv(tmp_path / "lab.csv", index=False)
    result, _ = score_files(tmp_path / "pred.csv", tmp_path / "lab.csv", n_boot=50)
    for j, f in enumerate(FINDINGS):
        m = result.image.findings[f]
        assert m.auroc == pytest.approx(roc_auc_score(y[:, j], scores[:, j]), abs=1e-12), (name, f)
        assert m.auroc_ci[0] <= m.auroc <= m.auroc_ci[1]
    outside = (scores < 0).any() or (scores > 1).any()
    # a 0.5 threshold means nothing for scores that are not probabilities: left out, said so
    assert (result.image.findings["Edema"].threshold is None) == bool(outside)
    assert bool(result.notes) == bool(outside)


@settings(max_examples=60, deadline=None)
@given(
    a=st.floats(0.01, 100),
    b=st.floats(-100, 100),
    kind=st.sampled_from(["affine", "exp", "cube", "rank"]),
    seed=st.integers(0, 10_000),
)
def test_auroc_is_invariant_to_any_monotone_transform(tmp_path_factory, a, b, kind, seed):
    tmp = tmp_path_factory.mktemp("mono")
    lab, y, rng = _truth(80, seed)
    y[0], y[1] = 0, 1  # both classes in every column
    lab[FINDINGS] = y
    p = np.round(rng.random(y.shape), 3)  # ties included
    t = {
        "affine": lambda x: a * x + b,
        "exp": lambda x: np.exp(3 * x),
        "cube": lambda x: (x - 0.5) ** 3,
        "rank": lambda x: np.apply_along_axis(rankdata, 0, x),
    }[kind](p)
    lab.to_csv(tmp / "lab.csv", index=False)
    results = []
    for scores in (p, t):
        pd.DataFrame(scores, columns=FINDINGS).assign(Path=lab["Path"]).to_csv(
            tmp / "p.csv", index=False
        )
        results.append(score_files(tmp / "p.csv", tmp / "lab.csv", n_boot=0)[0])
    for f in FINDINGS:
        assert results[0].image.findings[f].auroc == pytest.approx(
            results[1].image.findings[f].auroc, abs=1e-12
        )


def test_finding_sets_and_the_intersection(tmp_path):
    lab, y, rng = _truth()
    pred = pd.DataFrame(rng.random(y.shape), columns=FINDINGS).assign(Path=lab["Path"])
    pred.drop(columns=["Edema"]).to_csv(tmp_path / "pred.csv", index=False)
    lab.assign(**{"No Finding": 0, "Fracture": 1}).to_csv(tmp_path / "lab.csv", index=False)
    result, _ = score_files(tmp_path / "pred.csv", tmp_path / "lab.csv", n_boot=0)
    assert set(result.image.findings) == set(FINDINGS) - {"Edema"}
    assert any("only in the labels" in n and "Edema" in n for n in result.notes)
    with pytest.raises(CxrkitError, match="must be in both files"):
        score_files(tmp_path / "pred.csv", tmp_path / "lab.csv", findings="competition", n_boot=0)
    pred.to_csv(tmp_path / "all.csv", index=False)
    result, _ = score_files(
        tmp_path / "all.csv", tmp_path / "lab.csv", findings="competition", n_boot=0
    )
    assert list(result.image.findings) == FINDINGS


def test_operating_points_on_files(tmp_path, run_cli):
    lab, y, rng = _truth(seed=1)
    val_lab, val_y, _ = _truth(seed=2)
    scores = logit(np.clip(y * 0.4 + rng.random(y.shape) * 0.6, 1e-3, 1 - 1e-3))
    val_scores = logit(np.clip(val_y * 0.4 + rng.random(val_y.shape) * 0.6, 1e-3, 1 - 1e-3))
    for frame, s, name in ((lab, scores, "p.csv"), (val_lab, val_scores, "vp.csv")):
        pd.DataFrame(s, columns=FINDINGS).assign(Path=frame["Path"]).to_csv(
            tmp_path / name, index=False
        )
    lab.to_csv(tmp_path / "l.csv", index=False)
    val_lab.to_csv(tmp_path / "vl.csv", index=False)
    code, _, err = run_cli(
        "evaluate", "--predictions", tmp_path / "p.csv", "--labels", tmp_path / "l.csv",
        "--operating-point", "youden",
    )  # fmt: skip
    assert_one_line_error(code, err, "--val-predictions")
    result, _ = score_files(
        tmp_path / "p.csv", tmp_path / "l.csv", operating_point="youden",
        val_predictions=tmp_path / "vp.csv", val_labels=tmp_path / "vl.csv", n_boot=0,
    )  # fmt: skip
    for j, f in enumerate(FINDINGS):
        expected = fit_threshold(val_y[:, j], val_scores[:, j], "youden")
        m = result.image.findings[f]
        assert m.threshold == pytest.approx(expected)  # fitted in the logits' own units
        called = scores[:, j] >= expected
        assert m.tp == int((called & (y[:, j] == 1)).sum())


def test_predict_output_with_a_failed_image_is_scored_directly(tmp_path, run_cli):
    import cv2

    art = tiny_artifact(tmp_path / "model", ("Edema", "Cardiomegaly"), size=32, head_scale=20)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        cv2.imwrite(str(folder / f"{i:02d}.png"), (rng.random((48, 40)) * 255).astype(np.uint8))
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code, _, err = run_cli("predict", art, folder, "--out", tmp_path / "pred.csv")
    assert code == 0, err
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert pred["error"].notna().sum() == 1
    labels = pd.DataFrame(
        {
            "path": pred["path"],
            "Edema": rng.integers(0, 2, len(pred)),
            "Cardiomegaly": rng.integers(0, 2, len(pred)),
        }
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    code, out, err = run_cli(
        "evaluate", "--predictions", tmp_path / "pred.csv", "--labels", tmp_path / "labels.csv",
        "--bootstrap", "20", "--out", tmp_path / "ev",
    )  # fmt: skip
    assert code == 0, err
    assert "1 prediction row(s) have no scores" in err and "not recognised" not in err
    ok = pred["error"].isna()
    metrics = pd.read_json(tmp_path / "ev" / "metrics.json", typ="series")
    for f in ("Edema", "Cardiomegaly"):
        expected = roc_auc_score(labels.loc[ok, f], pred.loc[ok, f])
        assert metrics["image"]["findings"][f]["auroc"] == pytest.approx(expected, abs=1e-12)


def test_readers_through_files_equal_the_direct_comparison(tmp_path, run_cli):
    lab, y, rng = _truth(200, seed=3)
    scores = y * 0.5 + rng.random(y.shape)
    pd.DataFrame(scores, columns=FINDINGS).assign(Path=lab["Path"]).to_csv(
        tmp_path / "p.csv", index=False
    )
    lab.to_csv(tmp_path / "l.csv", index=False)
    reads = []
    for r in range(3):
        flip = rng.random(y.shape) < 0.15 + 0.05 * r
        read = np.where(flip, 1 - y, y)
        reads.append(read)
        # readers' files in the labels' layout, rows in another order
        pd.DataFrame(read, columns=FINDINGS).assign(Path=lab["Path"]).iloc[::-1].to_csv(
            tmp_path / f"rad{r + 1}.csv", index=False
        )
    files = [tmp_path / f"rad{r + 1}.csv" for r in range(3)]
    result, _ = score_files(
        tmp_path / "p.csv", tmp_path / "l.csv", readers=files, threshold=0.75, n_boot=100
    )
    groups = lab["Path"].str.extract(r"(patient\d+)")[0].to_numpy()
    for j, f in enumerate(FINDINGS):
        direct = compare_with_readers(
            y[:, j], scores[:, j], np.stack([r[:, j] for r in reads]), groups,
            names=["rad1", "rad2", "rad3"], threshold=0.75, n_boot=100,
        )  # fmt: skip
        assert result.readers[f] == direct
    code, out, err = run_cli(
        "evaluate", "--predictions", tmp_path / "p.csv", "--labels", tmp_path / "l.csv",
        *[x for fpath in files for x in ("--readers", fpath)], "--bootstrap", "50",
        "--out", tmp_path / "ev",
    )  # fmt: skip
    assert code == 0, err
    assert "readers below the model's ROC curve" in out and "rad2" in out
    from cxrkit.evaluate.results import read_results

    back = read_results(tmp_path / "ev")
    assert set(back.readers) == set(FINDINGS)
    assert back.readers["Edema"].readers[0].name == "rad1"


def test_majority_reference(tmp_path):
    lab, y, rng = _truth(120, seed=4)
    scores = rng.random(y.shape) + y
    pd.DataFrame(scores, columns=FINDINGS).assign(Path=lab["Path"]).to_csv(
        tmp_path / "p.csv", index=False
    )
    lab.to_csv(tmp_path / "l.csv", index=False)
    reads = [np.where(rng.random(y.shape) < 0.2, 1 - y, y) for _ in range(3)]
    files = []
    for r, read in enumerate(reads):
        files.append(tmp_path / f"r{r}.csv")
        pd.DataFrame(read, columns=FINDINGS).assign(Path=lab["Path"]).to_csv(files[-1], index=False)
    result, _ = score_files(
        tmp_path / "p.csv", tmp_path / "l.csv", readers=files, reference="majority", n_boot=0
    )
    majority = (np.stack(reads).sum(0) >= 2).astype(int)
    for j, f in enumerate(FINDINGS):
        assert result.image.findings[f].auroc == pytest.approx(
            roc_auc_score(majority[:, j], scores[:, j])
        )
    with pytest.raises(CxrkitError, match="pass --readers"):
        score_files(tmp_path / "p.csv", tmp_path / "l.csv", reference="majority")
