"""Label policies against truth tables, the hierarchy, masks and the label table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkit.core.errors import CxrkitError
from cxrkit.core.findings import canonical_name, resolve_findings
from cxrkit.data.index import META_COLUMNS
from cxrkit.data.labels import LabelPolicy, apply_hierarchy, label_table

NAN = np.nan
RAW = [1.0, 0.0, -1.0, NAN]  # positive, negative, uncertain, blank


def make_index(labels: dict[str, list[float]], **meta) -> pd.DataFrame:
    n = len(next(iter(labels.values())))
    frame = pd.DataFrame({c: pd.array([pd.NA] * n, dtype="string") for c in META_COLUMNS})
    frame["age"] = np.nan
    frame["dataset"] = pd.array(meta.get("dataset", ["chexpert"] * n), dtype="string")
    frame["view"] = pd.array(meta.get("view", ["frontal"] * n), dtype="string")
    frame["projection"] = pd.array(meta.get("projection", ["AP"] * n), dtype="string")
    for name, values in labels.items():
        frame[name] = np.asarray(values, np.float32)
    return frame


# (uncertain, blank) -> expected y and mask for RAW = [1, 0, -1, NaN]
TRUTH = {
    ("ones", "zero"): ([1, 0, 1, 0], [1, 1, 1, 1]),
    ("zeros", "zero"): ([1, 0, 0, 0], [1, 1, 1, 1]),
    ("ignore", "zero"): ([1, 0, 0, 0], [1, 1, 0, 1]),
    ("multiclass", "zero"): ([1, 0, 2, 0], [1, 1, 1, 1]),
    ("ones", "ignore"): ([1, 0, 1, 0], [1, 1, 1, 0]),
    ("zeros", "ignore"): ([1, 0, 0, 0], [1, 1, 1, 0]),
    ("ignore", "ignore"): ([1, 0, 0, 0], [1, 1, 0, 0]),
    ("multiclass", "ignore"): ([1, 0, 2, 0], [1, 1, 1, 0]),
}


@pytest.mark.parametrize(("uncertain", "blank"), list(TRUTH))
def test_policy_truth_table(uncertain, blank):
    frame = make_index({"Edema": RAW})
    t = LabelPolicy(uncertain=uncertain, blank=blank, hierarchy="none").apply(frame)
    want_y, want_m = TRUTH[(uncertain, blank)]
    assert t.y[:, 0].tolist() == want_y
    assert t.mask[:, 0].tolist() == [bool(m) for m in want_m]
    assert t.multiclass.tolist() == [uncertain == "multiclass"]
    assert t.y.dtype == np.float32 and t.mask.dtype == bool


@pytest.mark.parametrize(
    ("policy", "lo", "hi"), [("smooth_ones", 0.55, 0.85), ("smooth_zeros", 0.0, 0.3)]
)
def test_smoothed_uncertain_labels_in_range_and_seeded(policy, lo, hi):
    raw = [-1.0] * 500 + [1.0, 0.0]
    frame = make_index({"Edema": raw})
    a = LabelPolicy(uncertain=policy, seed=3).apply(frame)
    b = LabelPolicy(uncertain=policy, seed=3).apply(frame)
    c = LabelPolicy(uncertain=policy, seed=4).apply(frame)
    soft = a.y[:500, 0]
    assert soft.min() >= lo and soft.max() <= hi
    assert soft.std() > 0.05  # really drawn, not a constant
    assert np.array_equal(a.y, b.y) and not np.array_equal(a.y, c.y)
    assert a.y[500:, 0].tolist() == [1.0, 0.0] and a.mask.all()


def test_per_finding_uncertain_override():
    frame = make_index({"Atelectasis": [-1.0], "Edema": [-1.0], "Cardiomegaly": [-1.0]})
    pol = LabelPolicy(
        uncertain="zeros",
        uncertain_per_finding={"Atelectasis": "ones", "Edema": "ignore"},
        hierarchy="none",
    )
    t = pol.apply(frame)
    got = dict(
        zip(t.findings, zip(t.y[0].tolist(), t.mask[0].tolist(), strict=False), strict=False)
    )
    assert got["Atelectasis"] == (1.0, True)
    assert got["Edema"] == (0.0, False)
    assert got["Cardiomegaly"] == (0.0, True)


def test_policy_from_dict_accepts_uncertain_mapping_and_roundtrips():
    pol = LabelPolicy.from_dict(
        {"uncertain": {"default": "zeros", "Edema": "ones"}, "views": "frontal"}
    )
    assert pol.uncertain == "zeros" and pol.uncertain_per_finding == {"Edema": "ones"}
    assert LabelPolicy.from_dict(pol.to_dict()) == pol


def test_hierarchy_positive_is_transitive_and_uses_uncertain_children():
    raw = {
        "Pneumonia": np.array([1, -1, NAN, 0], np.float32),
        "Consolidation": np.array([NAN, NAN, NAN, 0], np.float32),
        "Lung Opacity": np.array([0, NAN, NAN, NAN], np.float32),
        "Cardiomegaly": np.array([NAN, NAN, -1, NAN], np.float32),
        "Enlarged Cardiomediastinum": np.array([NAN, NAN, 0, NAN], np.float32),
    }
    apply_hierarchy(raw, "positive")
    np.testing.assert_array_equal(raw["Consolidation"], [1, 1, NAN, 0])
    np.testing.assert_array_equal(raw["Lung Opacity"], [1, 1, NAN, NAN])  # via Consolidation
    np.testing.assert_array_equal(raw["Enlarged Cardiomediastinum"], [NAN, NAN, 1, NAN])


def test_hierarchy_propagate_keeps_uncertainty():
    raw = {
        "Edema": np.array([1, -1, -1, -1], np.float32),
        "Lung Opacity": np.array([0, 0, NAN, 1], np.float32),
    }
    apply_hierarchy(raw, "propagate")
    np.testing.assert_array_equal(raw["Lung Opacity"], [1, -1, -1, 1])


def test_hierarchy_none_changes_nothing_and_missing_parent_stays_masked():
    frame = make_index({"Cardiomegaly": [1.0, 0.0]})  # no parent column: parent not labelled
    t = LabelPolicy(findings=("Cardiomegaly", "Enlarged Cardiomediastinum")).apply(frame)
    assert t.mask[:, 1].tolist() == [False, False]
    assert t.y[:, 1].tolist() == [0.0, 0.0]
    frame2 = make_index({"Cardiomegaly": [1.0], "Enlarged Cardiomediastinum": [NAN]})
    t2 = LabelPolicy(hierarchy="none", blank="ignore").apply(frame2)
    assert t2.mask[0, t2.findings.index("Enlarged Cardiomediastinum")] == np.False_


def test_absent_finding_is_masked_never_negative():
    frame = make_index({"Cardiomegaly": [1.0, 0.0, 0.0]})
    t = LabelPolicy(findings="competition").apply(frame)
    assert t.findings == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    ]
    j = t.findings.index("Cardiomegaly")
    for k, f in enumerate(t.findings):
        assert t.mask[:, k].all() == (f == "Cardiomegaly")
    assert t.y[:, j].tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    ("views", "kept"),
    [("all", [0, 1, 2, 3]), ("frontal", [0, 1]), ("lateral", [2]), ("ap", [0]), ("pa", [1])],
)
def test_views(views, kept):
    frame = make_index(
        {"Edema": [1, 0, 1, 0]},
        view=["frontal", "frontal", "lateral", pd.NA],
        projection=["AP", "PA", pd.NA, pd.NA],
    )
    t = LabelPolicy(views=views).apply(frame)
    assert t.rows.tolist() == kept
    assert t.y.shape == (len(kept), 1)


def test_no_finding_derived():
    frame = make_index(
        {
            "No Finding": [1.0, 1.0, NAN, NAN],
            "Edema": [1.0, 0.0, 0.0, NAN],
            "Support Devices": [1.0, 1.0, 1.0, 1.0],
        }
    )
    dataset = LabelPolicy(blank="ignore").apply(frame)
    derived = LabelPolicy(blank="ignore", no_finding="derive").apply(frame)
    j = derived.findings.index("No Finding")
    assert dataset.y[:, j].tolist() == [1, 1, 0, 0] and dataset.mask[:, j].tolist() == [1, 1, 0, 0]
    # row 0: Edema positive -> 0; row 1/2: all known negative (devices don't count) -> 1; row 3: unknown
    assert derived.y[:, j].tolist() == [0, 1, 1, 0]
    assert derived.mask[:, j].tolist() == [True, True, True, False]


def test_label_table_counts():
    frame = make_index({"Edema": [1, 1, 0, -1, -1, NAN]})
    t = LabelPolicy(uncertain="ignore", blank="zero").apply(frame)
    row = label_table(frame, t).iloc[0]
    assert (row.positive, row.negative, row.uncertain, row.blank, row.masked) == (2, 2, 2, 1, 2)
    assert row.neg_pos_ratio == pytest.approx(1.0)


def test_bad_policy_options_are_clear_errors():
    with pytest.raises(CxrkitError, match="'uncertain' policy must be one of"):
        LabelPolicy(uncertain="u_one")
    with pytest.raises(CxrkitError, match="did you mean 'blank'"):
        LabelPolicy.from_dict({"blnk": "zero"})
    with pytest.raises(CxrkitError, match="did you mean 'Cardiomegaly'"):
        LabelPolicy(findings=("Cardiomegly",)).apply(make_index({"Cardiomegaly": [1.0]}))


def test_canonical_names_and_sets():
    assert canonical_name("Effusion") == "Pleural Effusion"
    assert canonical_name("pleural_thickening") == "Pleural Thickening"
    assert canonical_name("Infiltrate") == "Infiltration"
    assert resolve_findings("competition", []) == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    ]
    assert resolve_findings("Edema, effusion", []) == ["Edema", "Pleural Effusion"]
    with pytest.raises(CxrkitError, match="did you mean"):
        canonical_name("Pneumothorx")


def test_policy_files_in_configs_match_presets():
    from pathlib import Path

    from cxrkit.data.labels import PRESETS

    folder = Path(__file__).resolve().parents[2] / "configs" / "policies"
    files = sorted(folder.glob("*.yaml"))
    assert files
    for path in files:
        assert LabelPolicy.from_yaml(path) == PRESETS[path.stem], path.name


def test_policy_yaml_errors(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("uncertain: [ones\n")
    with pytest.raises(CxrkitError, match="not valid YAML at line"):
        LabelPolicy.from_yaml(bad)
    bad.write_text("uncertan: ones\n")
    with pytest.raises(CxrkitError, match="did you mean 'uncertain'"):
        LabelPolicy.from_yaml(bad)
    with pytest.raises(CxrkitError, match="does not exist"):
        LabelPolicy.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(CxrkitError, match="did you mean 'thesis'"):
        LabelPolicy.from_spec("thesys")


def test_hierarchy_only_for_datasets_that_follow_it():
    frame = make_index(
        {"Pneumonia": [1.0, 1.0], "Consolidation": [0.0, 0.0]}, dataset=["chexpert", "nih"]
    )
    t = LabelPolicy().apply(frame)
    j = t.findings.index("Consolidation")
    assert t.y[:, j].tolist() == [1.0, 0.0]  # NIH's own labels are left as they are


def test_policy_values_are_case_insensitive_and_suggest():
    assert LabelPolicy(views="Frontal", uncertain="ZEROS").views == "frontal"
    with pytest.raises(CxrkitError, match="Did you mean 'zeros'"):
        LabelPolicy(uncertain="zeroes")
    with pytest.raises(CxrkitError, match="seed"):
        LabelPolicy(seed=-1)
    with pytest.raises(CxrkitError, match="seed"):
        LabelPolicy.from_dict({"seed": "abc"})
    with pytest.raises(CxrkitError, match="did you mean 'competition'"):
        LabelPolicy(findings="competitoin").apply(make_index({"Edema": [1.0]}))
