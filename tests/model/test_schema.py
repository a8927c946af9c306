"""model.json is outside data: every field is checked against its declared range, in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_one_line_error, tiny_artifact
from cxrkit.core.errors import CxrkitError
from cxrkit.model.artifact import META_FILE, read_artifact_meta, read_meta_dict

LABELS = ("Edema", "Cardiomegaly")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("schema") / "model", LABELS, size=32)


def _raw(good: Path) -> dict:
    return json.loads((good / META_FILE).read_text())


BAD_FIELDS = [
    ("labels", ["x/../../bad/victim", "Edema"], "path separators"),
    ("labels", ["Edema", "line\r\nbreak"], "control characters"),
    ("labels", ["Edema", "x" * 65], "at most 64"),
    ("labels", ["Edema", "Edema"], "distinct"),
    ("labels", [], "1 to 1000"),
    ("labels", "Edema", "1 to 1000"),
    ("image_size", [0, 0], "square of 8 to 4096"),
    ("image_size", [-32, -32], "square of 8 to 4096"),
    ("image_size", [100000, 100000], "square of 8 to 4096"),
    ("image_size", [32, 48], "square of 8 to 4096"),
    ("mean", [0.5, 0.5, 0.5], "1 finite number"),
    ("std", [0.0], "positive"),
    ("std", ["1"], "finite number"),
    ("temperature", 0, "above 0"),
    ("temperature", float("nan"), "above 0"),
    ("clip_limit", -1.0, "above 0"),
    ("thresholds", {"Edema": 1.5}, "[0, 1]"),
    ("thresholds", {"Edema": "0.3"}, "[0, 1]"),
    ("thresholds", {"Edema": True}, "[0, 1]"),
    ("thresholds", {"Nope": 0.3}, "keyed by the model's labels"),
    ("input_mode", "rgb", "one of gray1"),
    ("fit", "zoom", "one of pad"),
    ("architecture", "../../x", "timm model name"),
    ("weights_sha256", "abc", "64 lowercase hex"),
    ("extra", [], "an object"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD_FIELDS)
def test_each_bad_field_is_one_line_naming_it(good, field, value, expected):
    raw = _raw(good) | {field: value}
    with pytest.raises(CxrkitError) as e:
        read_meta_dict(raw, "artifact 'm'")
    text = str(e.value)
    assert f"field '{field}" in text and expected in text, text
    assert "\n" not in text and "\r" not in text


def test_the_valid_artifact_passes(good):
    assert read_artifact_meta(good).labels == LABELS


def test_commands_refuse_a_tampered_artifact_in_one_line(good, tmp_path, run_cli):
    bad = tmp_path / "model"
    shutil.copytree(good, bad)
    raw = _raw(good) | {"image_size": [100000, 100000]}
    (bad / META_FILE).write_text(json.dumps(raw))
    img = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(img), np.zeros((40, 40), np.uint8))
    for args in (("predict", bad, img), ("explain", bad, img)):
        code, _, err = run_cli(*args)
        assert_one_line_error(code, err, "image_size")


def test_save_refuses_what_read_would_refuse(tmp_path):
    with pytest.raises(CxrkitError, match="path separators"):
        tiny_artifact(tmp_path / "m", ("ok", "a/b"), size=32)
    assert not (tmp_path / "m" / META_FILE).exists()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(sorted({f for f, _, _ in BAD_FIELDS} | {"output", "format_version"})),
    value=_JSON,
)
def test_any_value_in_any_field_is_accepted_or_one_line(field, value):
    raw = json.loads(_RAW_TEMPLATE) | {field: value}
    try:
        read_meta_dict(raw, "artifact 'm'")
    except CxrkitError as e:
        assert "\n" not in str(e)


_RAW_TEMPLATE = json.dumps(
    {
        "format_version": 1,
        "cxrkit_version": "0.1.0",
        "architecture": "test_resnet",
        "labels": list(LABELS),
        "input_mode": "gray1",
        "image_size": [32, 32],
        "mean": [0.5],
        "std": [0.25],
        "thresholds": {"Edema": 0.5, "Cardiomegaly": None},
        "config_hash": None,
        "weights_sha256": "0" * 64,
    }
)
