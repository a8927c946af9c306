"""Overlays and the original image's frame: the use-side of Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.core.errors import CxrkitError
from cxrkit.data.boxes import map_box
from cxrkit.evaluate.localization import box_mask
from cxrkit.use.explain import heatmap_to_image, overlay, save_overlay

# ---- overlays ------------------------------------------------------------------------------------


def test_overlay_blends_a_resized_colormap():
    gray = np.tile(np.arange(40, dtype=np.uint8) * 5, (30, 1))  # (30, 40)
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0
    out = overlay(gray, heat, alpha=0.0)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert (out == gray[:, :, None]).all()
    full = overlay(gray, heat, alpha=1.0, colormap="jet")
    assert tuple(full[15, 39]) == (128, 0, 0)  # jet's top is dark red, in RGB order
    assert tuple(full[15, 0]) == (0, 0, 128)  # and its bottom dark blue
    with pytest.raises(CxrkitError, match="did you mean 'turbo'"):
        overlay(gray, heat, colormap="turbp")


def test_save_overlay_writes_a_png_atomically(tmp_path: Path):
    gray = np.full((20, 30), 100, np.uint8)
    heat = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    path = save_overlay(tmp_path / "out" / "cam.png", gray, heat, alpha=0.5, colormap="inferno")
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(back, overlay(gray, heat, 0.5, "inferno"))
    assert [p.name for p in path.parent.iterdir()] == ["cam.png"]  # no temp file left
    with pytest.raises(CxrkitError, match="PNG"):
        save_overlay(tmp_path / "cam.jpg", gray, heat)


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_heatmap_to_image_inverts_the_fit(fit):
    hw, box, size = (300, 200), (40, 90, 100, 60), 64
    small = map_box(box, hw, size, fit)
    heat = box_mask(small, (size, size)).astype(np.float32)
    back = heatmap_to_image(heat, hw, fit)
    assert back.shape == hw
    rows, cols = np.nonzero(back >= 0.5)
    found = (cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min())
    np.testing.assert_allclose(found, box, atol=300 / size + 1)


# ---- the explanation and the old import path --------------------------------------------------------


def test_explanation_is_typed_and_still_reads_as_a_mapping():
    from cxrkit.use.explain import Explanation

    gray = np.zeros((5, 6), np.uint8)
    r = Explanation(
        probabilities=np.array([0.2, 0.7], np.float32),
        finding="Edema",
        index=1,
        heatmap=np.zeros((4, 4), np.float32),
        heatmap_image=np.zeros((5, 6), np.float32),
        gray=gray,
    )
    assert r.finding == r["finding"] == "Edema" and r["gray"] is gray
    assert list(r) == ["probabilities", "finding", "index", "heatmap", "heatmap_image", "gray"]
    assert len(r) == 6 and "heatmap" in r and r.get("nothing") is None
    with pytest.raises(KeyError):
        r["nothing"]


def test_the_old_explain_path_still_resolves_every_name():
    import warnings

    from cxrkit._legacy import CxrkitDeprecationWarning
    from cxrkit.data import boxes
    from cxrkit.evaluate import localization
    from cxrkit.model import cam
    from cxrkit.use import explain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CxrkitDeprecationWarning)
        import cxrkit.explain as old

        homes = {
            "GradCAM": cam, "target_layer": cam, "resolve_layer": cam, "cam_weights": cam,
            "normalize_maps": cam, "PROBE_SIZE": cam, "Explainer": explain, "Explanation": explain,
            "overlay": explain, "save_overlay": explain, "heatmap_to_image": explain,
            "evaluate_localization": localization, "pointing_game": localization,
            "box_iou": localization, "box_mask": localization, "localization_scores": localization,
            "DEFAULT_TOLERANCE_FRACTION": localization, "map_box": boxes, "read_box_table": boxes,
            "group_boxes": boxes,
        }  # fmt: skip
        for name, home in homes.items():
            assert getattr(old, name) is getattr(home, name), name
        assert old.METHODS == cam.CAM_METHODS == ("gradcam", "gradcam++")
