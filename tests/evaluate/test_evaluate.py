"""`cxrkit evaluate`, `compare` and `report` on a tiny trained run; scoring prediction files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import assert_one_line_error
from cxrkit.core.config import load_config
from cxrkit.core.errors import CxrkitError
from cxrkit.data.adapters import build_index
from cxrkit.data.cache import build_cache
from cxrkit.data.index import write_index
from cxrkit.data.labels import LabelPolicy
from cxrkit.data.splits import make_splits, write_splits
from cxrkit.evaluate.evaluate import LABEL_PREFIX, EvalOptions, evaluate_model, score_files
from cxrkit.model.artifact import read_artifact_meta
from cxrkit.synthetic.layouts import generate
from cxrkit.train.loop import train

FINDINGS = "Cardiomegaly,Pleural Effusion,Edema"


def _config(tmp: Path, name: str, *extra: str):
    return load_config(
        None,
        [
            f"data.index={tmp / 'index.parquet'}",
            f"data.splits={tmp / 'splits.parquet'}",
            f"data.cache={tmp / 'cache'}",
            f"data.policy={{findings: '{FINDINGS}'}}",
            "data.batch_size=32",
            "data.input_mode=gray1",
            "model.arch=test_resnet",
            "loss.name=bce",
            "optim.lr=0.003",
            "schedule.name=onecycle",
            "schedule.max_lr=0.003",
            "train.max_epochs=2",
            "train.accelerator=cpu",
            "train.devices=1",
            f"train.out={tmp / 'runs'}",
            f"train.name={name}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(workdir, run a, run b): two tiny CheXpert-layout runs (frontal and lateral views, so
    studies have several images) on the same splits."""
    tmp = tmp_path_factory.mktemp("eval")
    folder = generate("chexpert", tmp / "data", n=260, size=48, seed=5, workers=1)
    index = build_index("chexpert", folder)
    write_index(index, tmp / "index.parquet")
    targets = LabelPolicy(findings=FINDINGS).apply(index.frame)
    write_splits(
        make_splits(index.frame, targets, fractions=(0.5, 0.25, 0.25), seed=0),
        tmp / "splits.parquet",
    )
    build_cache(index, tmp / "cache", size=48, workers=1)
    a = train(_config(tmp, "a"))
    b = train(_config(tmp, "b", "train.seed=7", "train.max_epochs=1"))
    return tmp, a, b


@pytest.fixture(scope="module")
def evaluated(runs) -> tuple[dict, Path]:
    _, a, _ = runs
    return evaluate_model(a, EvalOptions(n_boot=200, seed=0))


def test_evaluate_writes_predictions_and_metrics_that_match_sklearn(runs, evaluated):
    result, folder = evaluated
    pred = pd.read_parquet(folder / "predictions.parquet")
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk["image"]["findings"].keys() == result["image"]["findings"].keys()
    images = pred[pred["level"] == "image"]
    assert set(images["part"]) == {"test"}
    for f in FINDINGS.split(","):
        lab = images[LABEL_PREFIX + f]
        m = lab.notna()
        expected = roc_auc_score(lab[m].astype(int), images.loc[m, f])
        got = result["image"]["findings"][f]
        assert got["auroc"] == pytest.approx(expected, abs=1e-9)
        lo, hi = got["auroc_ci"]
        assert lo <= got["auroc"] <= hi
        assert got["tp"] + got["fn"] == int(lab[m].sum())


def test_study_rows_aggregate_their_views_by_max(evaluated):
    result, folder = evaluated
    pred = pd.read_parquet(folder / "predictions.parquet")
    images, studies = pred[pred["level"] == "image"], pred[pred["level"] == "study"]
    assert result["primary"] == "study"  # CheXpert layout: lateral + frontal in some studies
    assert len(studies) == images["study_id"].nunique() < len(images)
    for f in FINDINGS.split(","):
        expected = images.groupby("study_id")[f].max()
        got = studies.set_index("study_id")[f]
        assert np.allclose(got.loc[expected.index].to_numpy(), expected.to_numpy())
    multi = studies[studies["images"] > 1]
    assert len(multi) > 0


def test_operating_points_are_stored_in_the_artifact(runs, evaluated):
    result, _ = evaluated
    _, a, _ = runs
    meta = read_artifact_meta(a / "model")
    fitted = result["operating_point"]["thresholds"]
    assert meta.thresholds == fitted
    assert meta.extra["operating_point"]["method"] == "youden"
    assert meta.extra["operating_point"]["fitted_on"] == "val"
    assert all(v is None or 0.0 <= v <= 1.0 for v in fitted.values())


def test_fixed_threshold_and_no_save(runs, tmp_path):
    _, a, _ = runs
    before = read_artifact_meta(a / "model").thresholds
    result, _ = evaluate_model(
        a,
        EvalOptions(operating_point="fixed", target=0.3, n_boot=0, save=False),
        out=tmp_path / "ev",
    )
    assert set(result["operating_point"]["thresholds"].values()) == {0.3}
    assert read_artifact_meta(a / "model").thresholds == before


def test_calibration_is_reported_and_temperature_stored(runs, tmp_path):
    _, a, _ = runs
    art = tmp_path / "copy"
    shutil.copytree(a, art)
    result, _ = evaluate_model(art, EvalOptions(n_boot=0, calibrate=True), out=tmp_path / "ev")
    cal = result["calibration"]
    assert 0.0 <= cal["before_temperature"]["pooled"]["ece"] <= 1.0
    assert read_artifact_meta(art / "model").temperature == pytest.approx(result["temperature"])
    assert result["temperature"] > 0


def test_compare_two_runs_with_delong(runs, evaluated, tmp_path):
    from cxrkit.evaluate.compare import compare_runs

    _, a, b = runs
    evaluate_model(b, EvalOptions(n_boot=50))
    result, folder = compare_runs([a, b])
    assert folder == a.parent / "comparison"  # beside the runs, not in the current folder
    assert [r["run"] for r in result["table"]] == ["a", "b"]
    assert result["table"][0]["model"] == "test_resnet"
    (test,) = result["delong"]
    assert test["comparable"]
    for f, d in test["findings"].items():
        a_auc = result["table"][0][f"{f} AUC"]
        assert d["auc_a"] == pytest.approx(a_auc, abs=1e-9)
        assert 0.0 <= d["p_value"] <= 1.0
    md = (folder / "comparison.md").read_text()
    assert "Multilabel AUC" in md and "DeLong" in md


def test_cli_evaluate_and_report(runs, run_cli, tmp_path):
    _, a, _ = runs
    code, out, err = run_cli(
        "evaluate", a, "--bootstrap", "20", "--no-save", "--out", tmp_path / "ev"
    )
    assert code == 0, err
    assert "AUROC" in out and (tmp_path / "ev" / "metrics.json").is_file()
    code, out, err = run_cli("report", tmp_path / "ev", "--out", tmp_path / "rep")
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["evaluate", "no/such/run"], ["does not exist"]),
        (["evaluate", "--operating-point", "best", "RUN"], ["operating-point", "youden"]),
        (["evaluate", "--operating-point", "sensitivity", "RUN"], ["--target"]),
        (["evaluate", "--predictions", "p.csv"], ["--labels"]),
        (["report", "no/such/run"], ["does not exist"]),
        (["evaluate", "--operating-point", "youden", "--target", "0.9", "RUN"], ["--target"]),
        (["evaluate", "RUN", "--config", "nope.yaml"], ["nope.yaml", "does not exist"]),
        (["compare", "RUN", "no/such/run"], ["does not exist"]),
    ],
)
def test_cli_evaluate_mistakes_are_one_line(runs, run_cli, args, fragments):
    _, a, _ = runs
    args = [str(a) if x == "RUN" else x for x in args]
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, *fragments)


# ---- scoring files ---------------------------------------------------------------------------------
def _chexpert_like(tmp: Path, rng: np.random.Generator):
    """Image predictions (Path) and study labels (Study) in CheXpert's test layout."""
    rows, labels = [], []
    for p in range(30):
        for s in range(2):
            study = f"CheXpert-v1.0/test/patient{p:05d}/study{s + 1}"
            y = rng.integers(0, 2, 3)
            labels.append(
                {"Study": study, "Cardiomegaly": y[0], "Edema": y[1], "Pleural Effusion": y[2]}
            )
            for v in range(1 + (p % 2)):
                score = np.clip(0.3 * y + rng.random(3) * 0.7, 0, 1)
                rows.append(
                    {
                        "Path": f"test/patient{p:05d}/study{s + 1}/view{v + 1}_frontal.jpg",
                        "Cardiomegaly": score[0],
                        "Edema": score[1],
                        "Pleural_Effusion": score[2],
                    }
                )
    pred, lab = pd.DataFrame(rows), pd.DataFrame(labels)
    pred.to_csv(tmp / "pred.csv", index=False)
    lab.to_csv(tmp / "labels.csv", index=False)
    return pred, lab


def test_score_files_aggregates_images_to_chexpert_studies(tmp_path):
    pred, lab = _chexpert_like(tmp_path, np.random.default_rng(0))
    result, folder = score_files(
        tmp_path / "pred.csv", tmp_path / "labels.csv", n_boot=100, out=tmp_path / "out"
    )
    assert result["level"] == "study" and result["bootstrap_groups"] == "patient"
    study = pred["Path"].str.rsplit("/", n=1).str[0]
    agg = pred.assign(study=study).groupby("study")["Edema"].max()
    keys = lab["Study"].str.replace("CheXpert-v1.0/", "", regex=False)
    expected = roc_auc_score(lab["Edema"], agg.loc[keys].to_numpy())
    assert result["image"]["findings"]["Edema"]["auroc"] == pytest.approx(expected)
    assert (folder / "metrics.json").is_file()


def test_score_files_bad_inputs(tmp_path):
    pred, lab = _chexpert_like(tmp_path, np.random.default_rng(1))
    # a repeated image is an error even when the labels are per study (never folded silently)
    pd.concat([pred, pred.iloc[[0]]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(CxrkitError, match="duplicate 'Path'"):
        score_files(tmp_path / "dup.csv", tmp_path / "labels.csv", n_boot=0)
    # a misspelt column: the findings in both files are scored, and a note names what was left
    pred.rename(columns={"Edema": "Edemaa"}).to_csv(tmp_path / "typo.csv", index=False)
    result, _ = score_files(tmp_path / "typo.csv", tmp_path / "labels.csv", n_boot=0)
    assert (
        "Edema" not in result.image.findings and len(result.image.findings) == len(lab.columns) - 2
    )
    assert any("Edemaa" in n for n in result.notes) and any(
        "only in the labels" in n for n in result.notes
    )
    pred.drop(columns=["Edema"]).to_csv(tmp_path / "fewer.csv", index=False)
    result, _ = score_files(tmp_path / "fewer.csv", tmp_path / "labels.csv", n_boot=0)
    assert any("only in the labels: Edema" in n for n in result.notes)
    # scores above 1 are scores: ranked, and the 0.5 threshold's metrics left out, with a note
    bad = pred.copy()
    bad.loc[3, "Edema"] = 1.7
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result, _ = score_files(tmp_path / "bad.csv", tmp_path / "labels.csv", n_boot=0)
    edema = result.image.findings["Edema"]
    assert edema.auroc is not None and edema.threshold is None and edema.sensitivity is None
    assert any("'Edema': scores are not probabilities" in n for n in result.notes)
    # a finding with no positive case: undefined with the reason, never NaN, never a crash
    lab.assign(Cardiomegaly=0).to_csv(tmp_path / "noneg.csv", index=False)
    result, _ = score_files(tmp_path / "pred.csv", tmp_path / "noneg.csv", n_boot=20)
    card = result["image"]["findings"]["Cardiomegaly"]
    assert card["auroc"] is None and "no positive" in card["undefined"]
    json.dumps(result.to_dict(), allow_nan=False)
    # selecting findings scores a subset
    result, _ = score_files(
        tmp_path / "fewer.csv",
        tmp_path / "labels.csv",
        n_boot=0,
        findings=["cardiomegaly", "Pleural Effusion"],
    )
    assert list(result["image"]["findings"]) == ["Cardiomegaly", "Pleural Effusion"]


def test_cli_scores_files_with_one_line_errors(tmp_path, run_cli):
    _chexpert_like(tmp_path, np.random.default_rng(2))
    code, out, err = run_cli(
        "evaluate",
        "--predictions",
        tmp_path / "pred.csv",
        "--labels",
        tmp_path / "labels.csv",
        "--bootstrap",
        "10",
    )
    assert code == 0, err
    assert "Edema" in out and "macro" in out
    code, _, err = run_cli(
        "evaluate", "--predictions", tmp_path / "pred.csv", "--labels", tmp_path / "nope.csv"
    )
    assert_one_line_error(code, err, "does not exist")


def test_scoring_against_a_truth_table_is_the_demo_s_masked_auroc(runs):
    """The demo scores the test part against synthetic_truth.csv: evaluate_model(truth=...) gives
    the per-finding AUROC the demo printed with masked_auroc (to float32 noise)."""
    import torch

    from cxrkit.data.loader import make_datamodule
    from cxrkit.evaluate.inference import masked_auroc, predict_part
    from cxrkit.model.artifact import load_artifact

    _, a, _ = runs
    cfg = load_config(a / "config.yaml")
    dm = make_datamodule(cfg)
    model, meta = load_artifact(a / "model")
    probs, rows = predict_part(model, dm, "test", meta.output)
    paths = dm.index_frame["path"].to_numpy()[rows]
    rng = np.random.default_rng(0)
    truth = pd.DataFrame(
        rng.integers(0, 2, (len(paths), len(meta.labels))), index=paths, columns=meta.labels
    ).astype(np.float32)
    y = truth.loc[paths, list(meta.labels)].to_numpy(np.float32)
    expected = masked_auroc(
        torch.from_numpy(probs), torch.from_numpy(y), torch.from_numpy(np.ones_like(y, bool))
    )
    before = read_artifact_meta(a / "model").thresholds
    result, folder = evaluate_model(
        a,
        EvalOptions(operating_point="fixed", n_boot=0, aggregate="none", save=False),
        truth=truth,
        write=False,
    )
    got = [result.image.findings[f].auroc for f in meta.labels]
    assert got == pytest.approx(expected, abs=1e-6)
    assert result.image.average.macro_auroc == pytest.approx(np.mean(expected), abs=1e-6)
    assert result.image.n_images == len(rows)
    assert read_artifact_meta(a / "model").thresholds == before
    with pytest.raises(CxrkitError, match="no row in the truth table"):
        evaluate_model(a, EvalOptions(n_boot=0, save=False), truth=truth.iloc[1:], write=False)
