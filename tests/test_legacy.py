"""The import paths cxrkit 0.1's docs showed keep working for one release, with a deprecation warning."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import warnings

import pytest

from cxrkit._legacy import MOVED, CxrkitDeprecationWarning

#: (old module, name) pairs shown in cxrkit 0.1's README, docs and benchmarks
SHOWN_IN_01_DOCS = [
    ("cxrkit.datasets", "build_index"),
    ("cxrkit.datasets.synthetic", "generate"),
    ("cxrkit.datasets.synth_render", "render"),
    ("cxrkit.datasets.synth_render", "sample_anatomy"),
    ("cxrkit.datasets.nih", "read_boxes"),
    ("cxrkit.findings", "CHEXPERT_FINDINGS"),
    ("cxrkit.models", "probabilities"),
    ("cxrkit.models", "load_artifact"),
    ("cxrkit.models", "create_model"),
    ("cxrkit.models", "save_artifact"),
    ("cxrkit.labels", "LabelPolicy"),
    ("cxrkit.labels", "label_table"),
    ("cxrkit.labels", "PRESETS"),
    ("cxrkit.interop", "export_onnx"),
    ("cxrkit.interop", "import_torchxrayvision"),
    ("cxrkit.interop", "from_torchxrayvision_model"),
    ("cxrkit.interop", "open_onnx_session"),
    ("cxrkit.inputs", "IMAGENET_MEAN"),
    ("cxrkit.inputs", "IMAGENET_STD"),
    ("cxrkit.inputs", "InputPipeline"),
    ("cxrkit.cache", "build_cache"),
    ("cxrkit.cache", "open_cache"),
    ("cxrkit.metrics", "evaluate"),
    ("cxrkit.metrics", "fit_threshold"),
    ("cxrkit.train", "CXRModule"),
    ("cxrkit.train", "make_datamodule"),
    ("cxrkit.train", "train"),
    ("cxrkit.splits", "make_splits"),
    ("cxrkit.splits", "read_splits"),
    ("cxrkit.splits", "write_splits"),
    ("cxrkit.splits", "positives"),
    ("cxrkit.splits", "split_report"),
    ("cxrkit.predict", "Predictor"),
    ("cxrkit.predict", "expand_inputs"),
    ("cxrkit.parallel", "usable_cores"),
    ("cxrkit.index", "write_index"),
    ("cxrkit.index", "read_index"),
    ("cxrkit.index", "index_fingerprint"),
    ("cxrkit.imaging", "read_image"),
    ("cxrkit.imaging", "to_uint8"),
    ("cxrkit.imaging", "resize_square"),
    ("cxrkit.imaging", "load_for_cache"),
    ("cxrkit.explain", "GradCAM"),
    ("cxrkit.explain", "save_overlay"),
    ("cxrkit.errors", "CxrkitError"),
    ("cxrkit.data", "CacheDataset"),
    ("cxrkit.config", "load_config"),
    ("cxrkit.ensemble", "make_ensemble"),
    ("cxrkit.evaluation", "evaluate_model"),
    ("cxrkit.report", "build_report"),
    ("cxrkit.report", "compare_runs"),
    ("cxrkit.serve", "create_app"),
]


@pytest.mark.filterwarnings("ignore::cxrkit._legacy.CxrkitDeprecationWarning")
@pytest.mark.parametrize(("old", "name"), SHOWN_IN_01_DOCS)
def test_old_path_resolves_to_the_new_home(old: str, name: str) -> None:
    module = importlib.import_module(old)
    obj = getattr(module, name)
    homes = [importlib.import_module(m) for m in MOVED[old] if importlib.util.find_spec(m)]
    assert any(getattr(h, name, None) is obj for h in homes), f"{old}.{name} is not a moved name"


def test_every_old_module_points_at_modules_that_exist() -> None:
    missing = [m for homes in MOVED.values() for m in homes if importlib.util.find_spec(m) is None]
    assert missing == []


def test_an_old_path_warns_once_with_the_new_place() -> None:
    # a fresh interpreter: this process may have imported the old module already
    code = (
        "import warnings; warnings.simplefilter('always');\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from cxrkit.labels import LabelPolicy\n"
        "    from cxrkit.labels import label_table\n"
        "from cxrkit.data.labels import LabelPolicy as New\n"
        "msgs = [str(x.message) for x in w if x.category.__name__ == 'CxrkitDeprecationWarning']\n"
        "assert LabelPolicy is New, 'not the same class'\n"
        "assert len(msgs) == 1 and 'cxrkit.data.labels' in msgs[0], msgs\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_new_paths_do_not_warn() -> None:
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "from cxrkit.data.labels import LabelPolicy\n"
        "from cxrkit.model.artifact import load_artifact\n"
        "from cxrkit.data.loader import CacheDataset\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_an_unknown_name_is_an_attribute_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CxrkitDeprecationWarning)
        module = importlib.import_module("cxrkit.labels")
        with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
            _ = module.NotAThing
