"""Localisation scores (pointing game, IoU) and the loop over a box file, on synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit.core.errors import CxrkitError
from cxrkit.data.boxes import group_boxes, map_box, read_box_table
from cxrkit.data.imaging import resize_square
from cxrkit.evaluate.localization import box_iou, box_mask, localization_scores, pointing_game
from cxrkit.model.cam import GradCAM


def _seeded(build, seed: int = 0):
    """Build a module under a fixed seed without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


# ---- localisation scores -------------------------------------------------------------------------


def test_box_mask_uses_pixel_centres():
    m = box_mask([(1.4, 0.6, 2.0, 1.0)], (4, 5))  # x ∈ [1.4, 3.4): centres 1.5, 2.5; y: 0.6–1.6
    expected = np.zeros((4, 5), bool)
    expected[1, 1:3] = True
    np.testing.assert_array_equal(m, expected)
    tiny = box_mask([(2.6, 2.6, 0.2, 0.2)], (4, 5))  # covers no centre: keeps its own pixel
    assert tiny.sum() == 1 and tiny[2, 2]


def test_pointing_game_hit_miss_tolerance_and_flat_maps():
    heat = np.zeros((20, 20), np.float32)
    heat[10, 10] = 1.0  # peak at pixel centre (10.5, 10.5)
    assert pointing_game(heat, [(8, 8, 4, 4)], tolerance=0)
    assert not pointing_game(heat, [(0, 0, 5, 5), (14, 10, 3, 3)], tolerance=3.0)  # 3.5 px away
    assert pointing_game(heat, [(0, 0, 5, 5), (14, 10, 3, 3)], tolerance=3.5)
    assert pointing_game(np.pad(heat, ((0, 1004), (0, 1004))), [(14, 10, 3, 3)])  # 15 px at 1024
    assert not pointing_game(np.zeros((20, 20)), [(0, 0, 20, 20)])  # no maximum: a miss
    plateau = np.zeros((20, 20), np.float32)
    plateau[2:8, 12:18] = 1.0  # centre (15, 5)
    assert pointing_game(plateau, [(14.5, 4.5, 1, 1)], tolerance=0)
    with pytest.raises(ValueError, match="no box with a positive area"):
        pointing_game(heat, [])
    with pytest.raises(ValueError, match="no box with a positive area"):
        pointing_game(heat, [(19.5, 0, 0, 20)])  # cut away by crop: not a target at the border
    assert not box_mask([], (4, 4)).any()


def test_box_iou_by_hand():
    heat = np.zeros((10, 10), np.float32)
    heat[0:4, 0:4] = 0.8  # ≥ 0.5 × max
    heat[0:4, 4:6] = 0.3  # below
    heat[9, 9] = 1.0  # the maximum, outside the box
    # predicted 16 + 1 pixels, box 4×6 = 24 pixels at (0, 0); intersection 16
    assert box_iou(heat, [(0, 0, 6, 4)]) == pytest.approx(16 / (17 + 24 - 16))
    assert box_iou(heat, [(0, 0, 6, 4)], threshold=0.2) == pytest.approx(24 / 25)
    assert box_iou(np.zeros((10, 10)), [(0, 0, 6, 4)]) == 0.0
    with pytest.raises(CxrkitError, match="threshold"):
        box_iou(heat, [(0, 0, 6, 4)], threshold=0)


def test_localization_scores_aggregate():
    heat = np.zeros((10, 10), np.float32)
    heat[2:4, 2:4] = 1.0
    records = [
        {"finding": "Nodule", "heatmap": heat, "boxes": [(2, 2, 2, 2)]},  # hit, IoU 1
        {"finding": "Nodule", "heatmap": heat, "boxes": [(6, 6, 2, 2)]},  # miss, IoU 0
        {"finding": "Mass", "hit": True, "iou": 0.5},
    ]
    s = localization_scores(iter(records), tolerance=0)
    assert list(s["findings"]) == ["Mass", "Nodule"]
    assert s["findings"]["Nodule"] == {"n": 2, "hits": 1, "hit_rate": 0.5, "mean_iou": 0.5}
    assert s["overall"]["n"] == 3 and s["overall"]["hit_rate"] == pytest.approx(2 / 3)
    assert s["overall"]["mean_iou"] == pytest.approx(0.5)
    assert s["overall"]["macro_hit_rate"] == pytest.approx(0.75)
    assert s["tolerance_px"] == 0 and s["tolerance_fraction"] is None
    frame = pd.DataFrame([{"finding": "Mass", "hit": False, "iou": 0.0}])
    assert localization_scores(frame)["overall"]["hit_rate"] == 0.0
    empty = localization_scores([])
    assert empty["overall"]["n"] == 0 and empty["overall"]["hit_rate"] is None
    assert empty["tolerance_px"] is None and empty["tolerance_fraction"] == 15 / 1024
    with pytest.raises(ValueError, match="needs 'heatmap'"):
        localization_scores([{"finding": "Mass"}])


def test_localization_loop_on_a_synthetic_nih_dataset(tmp_path: Path):
    """The loop docs/explain.md gives, end to end: artifact, box table, maps, scores."""
    from cxrkit.core.findings import FINDING_SETS
    from cxrkit.data.adapters.nih import index_nih
    from cxrkit.data.imaging import read_image, to_uint8
    from cxrkit.data.inputs import InputPipeline
    from cxrkit.model.artifact import load_artifact, save_artifact
    from cxrkit.model.networks import create_model
    from cxrkit.synthetic.layouts import generate

    root = generate("nih", tmp_path / "data", n=20, size=80, seed=0, workers=1)
    labels = list(FINDING_SETS["nih"])
    net = _seeded(lambda: create_model("test_resnet", num_classes=len(labels), input_mode="gray3"))
    save_artifact(
        net, tmp_path / "model", arch="test_resnet", findings=labels, input_mode="gray3",
        image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), fit="crop",
    )  # fmt: skip
    model, meta = load_artifact(tmp_path / "model")
    size = meta.image_size[0]
    pipe = InputPipeline(meta.input_mode, clip_limit=meta.clip_limit, mean=meta.mean, std=meta.std)
    cam = GradCAM(model, output=meta.output)
    table = read_box_table(root / "BBox_List_2017.csv", root=root)
    assert len(table) and set(table["path"]) <= set(index_nih(root).frame["path"])
    boxes = group_boxes(table)
    expected = 0

    def records():
        nonlocal expected
        for path, by_finding in boxes.items():
            img = to_uint8(read_image(root / path))
            x = pipe(torch.from_numpy(resize_square(img, size, meta.fit))[None])
            for finding, b in by_finding.items():
                small = map_box(b, img.shape, size, meta.fit)
                if finding in meta.labels and (small[:, 2] * small[:, 3] > 0).any():
                    heat = cam(x, meta.labels.index(finding))[0]
                    expected += 1
                    yield {
                        "finding": finding,
                        "hit": pointing_game(heat, small),
                        "iou": box_iou(heat, small),
                    }

    scores = localization_scores(records())
    assert scores["overall"]["n"] == expected > 0
    assert set(scores["findings"]) <= set(labels)
    assert 0 <= scores["overall"]["hit_rate"] <= 1 and 0 <= scores["overall"]["mean_iou"] <= 1
