"""Tests of the synthetic chest radiograph renderer: contract, determinism and physics."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from cxrkit.core.findings import FINDINGS, NO_FINDING
from cxrkit.synthetic.render import (
    RENDERABLE_FINDINGS,
    Anatomy,
    render,
    sample_anatomy,
)


def _anatomy(seed: int) -> Anatomy:
    return sample_anatomy(np.random.default_rng(seed))


def _pair(finding: str, seed: int, size: int = 256):
    """The same patient and image state without and with ``finding``: (plain, with, box)."""
    anatomy = _anatomy(seed)
    plain, _ = render(anatomy, [], size=size, rng=np.random.default_rng(seed + 1000))
    with_it, boxes = render(anatomy, [finding], size=size, rng=np.random.default_rng(seed + 1000))
    return plain.astype(np.float32), with_it.astype(np.float32), boxes[finding]


def _crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x, y, w, h = box
    return img[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]


# ------------------------------------------------------------------------------------------------
# Contract
# ------------------------------------------------------------------------------------------------


def test_renderable_findings_are_all_canonical_findings_but_no_finding() -> None:
    assert set(RENDERABLE_FINDINGS) == set(FINDINGS) - {NO_FINDING}


def test_sample_anatomy_is_deterministic_frozen_and_hashable() -> None:
    a, b = _anatomy(3), _anatomy(3)
    assert a == b and hash(a) == hash(b)
    assert a != _anatomy(4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.center_x = 0.3  # type: ignore[misc]


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_render_is_deterministic(view: str) -> None:
    anatomy = _anatomy(11)
    findings = ["Cardiomegaly", "Nodule", "Support Devices", "Pneumothorax"]
    a, boxes_a = render(anatomy, findings, size=128, view=view, rng=np.random.default_rng(5))
    b, boxes_b = render(anatomy, findings, size=128, view=view, rng=np.random.default_rng(5))
    assert a.tobytes() == b.tobytes()
    assert boxes_a == boxes_b


def test_finding_order_duplicates_and_no_finding_do_not_matter() -> None:
    anatomy = _anatomy(12)
    a, boxes_a = render(anatomy, ["Mass", "Edema"], size=96, rng=np.random.default_rng(1))
    b, boxes_b = render(
        anatomy, ["Edema", "Mass", "Edema", NO_FINDING], size=96, rng=np.random.default_rng(1)
    )
    assert a.tobytes() == b.tobytes() and boxes_a == boxes_b
    c, boxes_c = render(anatomy, [NO_FINDING], size=96, rng=np.random.default_rng(1))
    d, _ = render(anatomy, [], size=96, rng=np.random.default_rng(1))
    assert c.tobytes() == d.tobytes() and boxes_c == {}


def test_render_does_not_use_the_global_random_state() -> None:
    anatomy = _anatomy(13)
    np.random.seed(0)
    a, _ = render(anatomy, ["Fibrosis"], size=64, rng=np.random.default_rng(2))
    np.random.seed(1)
    b, _ = render(anatomy, ["Fibrosis"], size=64, rng=np.random.default_rng(2))
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("size", [32, 33, 64, 97, 128, 256, 512, 1024])
@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_output_dtype_and_shape(size: int, view: str) -> None:
    img, boxes = render(
        _anatomy(size), ["Pleural Effusion"], size=size, view=view, rng=np.random.default_rng(0)
    )
    assert img.dtype == np.uint8
    assert img.shape == (size, size)
    assert img.std() > 10  # an image, not a blank
    assert set(boxes) == ({"Pleural Effusion"} if view == "frontal" else set())


@pytest.mark.parametrize("finding", RENDERABLE_FINDINGS)
def test_every_finding_renders_in_both_views(finding: str) -> None:
    anatomy = _anatomy(21)
    for view in ("frontal", "lateral"):
        img, boxes = render(anatomy, [finding], size=64, view=view, rng=np.random.default_rng(3))
        assert img.shape == (64, 64) and img.dtype == np.uint8
        assert boxes == ({} if view == "lateral" else {finding: boxes[finding]})


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_all_findings_at_once(view: str) -> None:
    for seed in range(3):
        img, boxes = render(
            _anatomy(seed),
            RENDERABLE_FINDINGS,
            size=128,
            view=view,
            rng=np.random.default_rng(seed),
        )
        assert img.shape == (128, 128)
        assert set(boxes) == (set(RENDERABLE_FINDINGS) if view == "frontal" else set())


def test_unknown_finding_view_or_size_raises_value_error() -> None:
    anatomy = _anatomy(0)
    with pytest.raises(ValueError, match="Cardiomegly"):
        render(anatomy, ["Cardiomegly"], size=64, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        render(anatomy, [], size=64, view="oblique", rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        render(anatomy, [], size=4, rng=np.random.default_rng(0))


def test_aliases_are_accepted() -> None:
    anatomy = _anatomy(0)
    a, boxes_a = render(anatomy, ["Effusion"], size=64, rng=np.random.default_rng(0))
    b, boxes_b = render(anatomy, ["Pleural Effusion"], size=64, rng=np.random.default_rng(0))
    assert a.tobytes() == b.tobytes() and set(boxes_a) == set(boxes_b) == {"Pleural Effusion"}


@pytest.mark.parametrize("size", [32, 64, 256])
def test_boxes_are_inside_the_image_and_not_empty(size: int) -> None:
    for seed in range(6):
        _, boxes = render(
            _anatomy(100 + seed),
            RENDERABLE_FINDINGS,
            size=size,
            rng=np.random.default_rng(seed),
        )
        assert set(boxes) == set(RENDERABLE_FINDINGS)
        for name, (x, y, w, h) in boxes.items():
            assert x >= 0 and y >= 0, name
            assert x + w <= size + 1e-6 and y + h <= size + 1e-6, name
            assert w >= 1 and h >= 1, name


@pytest.mark.parametrize("finding", RENDERABLE_FINDINGS)
def test_each_finding_changes_the_image_inside_its_box(finding: str) -> None:
    """A finding's strongest change lies in its box, and the box is not the whole image."""
    for seed in range(3):
        plain, with_it, box = _pair(finding, seed, size=128)
        diff = cv2.blur(np.abs(with_it - plain), (3, 3))
        assert diff.max() > 8, finding
        x, y, w, h = box
        row, col = np.unravel_index(int(np.argmax(diff)), diff.shape)
        assert x - 2 <= col <= x + w + 2 and y - 2 <= row <= y + h + 2, finding
        assert w * h < 0.6 * 128 * 128, finding
        # A displaced rib fragment runs on beyond the break; emphysema also moves ribs and domes.
        if finding not in ("Fracture", "Emphysema"):
            changed = diff > 0.3 * diff.max()
            inside = np.zeros_like(changed)
            inside[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
            assert changed[inside].sum() >= 0.8 * changed.sum(), finding


# ------------------------------------------------------------------------------------------------
# Physics
# ------------------------------------------------------------------------------------------------


def _heart_width(img: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Mean width of the bright run through the box centre over the lower part of the heart."""
    x, y, w, h = box
    size = img.shape[1]
    cx = int(x + w / 2)
    widths = []
    for row in range(int(y + 0.55 * h), int(y + 0.8 * h)):
        prof = cv2.GaussianBlur(img[row : row + 1], (5, 1), 0)[0]
        lung = np.percentile(prof[int(0.05 * size) : int(0.95 * size)], 10)
        bright = prof > (lung + prof[cx]) / 2
        lo = hi = cx
        while lo > 0 and bright[lo - 1]:
            lo -= 1
        while hi < size - 1 and bright[hi + 1]:
            hi += 1
        widths.append(hi - lo + 1)
    return float(np.mean(widths))


def test_cardiomegaly_widens_the_heart_shadow() -> None:
    for seed in range(6):
        plain, big, box = _pair("Cardiomegaly", seed)
        assert _heart_width(big, box) > 1.15 * _heart_width(plain, box), seed


def test_cardiomegaly_box_gives_a_cardiothoracic_ratio_above_half() -> None:
    for seed in range(6):
        anatomy = _anatomy(seed)
        _, boxes = render(anatomy, ["Cardiomegaly"], size=256, rng=np.random.default_rng(seed))
        lungs = render(anatomy, ["Emphysema"], size=256, rng=np.random.default_rng(seed))[1]
        thorax = lungs["Emphysema"][2] / 1.04  # emphysema widens the lungs by 2-6 %
        assert boxes["Cardiomegaly"][2] / thorax > 0.5, seed


def test_effusion_raises_intensity_in_the_lower_lung_zone() -> None:
    for seed in range(6):
        plain, wet, box = _pair("Pleural Effusion", seed)
        assert _crop(wet, box).mean() > _crop(plain, box).mean() + 12, seed
        x, y, w, h = box
        lower = (x, y + h / 2, w, h / 2)
        assert _crop(wet, lower).mean() > _crop(plain, lower).mean() + 15, seed


@pytest.mark.parametrize("finding", ["Nodule", "Mass", "Lung Lesion"])
def test_round_opacities_raise_intensity_inside_their_box(finding: str) -> None:
    for seed in range(6):
        plain, with_it, box = _pair(finding, seed)
        assert _crop(with_it, box).mean() > _crop(plain, box).mean() + 8, (finding, seed)


def test_pneumothorax_darkens_and_smooths_the_lung_periphery() -> None:
    def fine_texture(img: np.ndarray) -> np.ndarray:
        return np.abs(cv2.Laplacian(cv2.GaussianBlur(img, (0, 0), 1.0), cv2.CV_32F))

    for seed in range(6):
        plain, ptx, box = _pair("Pneumothorax", seed)
        assert _crop(ptx, box).mean() < _crop(plain, box).mean() - 3, seed
        # The lucent rim between the chest wall and the collapsed lung, away from its edges:
        # darker, and without the lung markings and parenchymal grain.
        rim = ((plain - ptx) > 6).astype(np.uint8)
        interior = cv2.erode(rim, np.ones((11, 11), np.uint8)).astype(bool)
        assert interior.sum() > 100, seed
        assert fine_texture(ptx)[interior].mean() < 0.9 * fine_texture(plain)[interior].mean()
        # A thin bright visceral pleural line appears inside the box.
        line = _crop(((ptx - plain) > 8).astype(np.uint8), box)
        assert line.sum() > 20, seed


def test_support_devices_add_thin_bright_structures() -> None:
    for seed in range(6):
        plain, dev, box = _pair("Support Devices", seed)
        bright = ((dev - plain) > 30).astype(np.uint8)
        assert bright.sum() > 100, seed
        # Mostly thin: a 5x5 erosion removes most of it (a pacemaker box may survive).
        thick = cv2.erode(bright, np.ones((5, 5), np.uint8))
        assert thick.sum() < 0.4 * bright.sum(), seed
        assert _crop(bright, box).sum() >= 0.95 * bright.sum(), seed


def test_emphysema_darkens_the_lungs() -> None:
    for seed in range(4):
        plain, emph, box = _pair("Emphysema", seed)
        assert _crop(emph, box).mean() < _crop(plain, box).mean() - 5, seed


def test_enlarged_cardiomediastinum_brightens_the_upper_mediastinum() -> None:
    for seed in range(4):
        plain, wide, box = _pair("Enlarged Cardiomediastinum", seed)
        assert _crop(wide, box).mean() > _crop(plain, box).mean() + 8, seed


def test_per_image_variation_for_the_same_patient() -> None:
    anatomy = _anatomy(7)
    a, _ = render(anatomy, [], size=128, rng=np.random.default_rng(1))
    b, _ = render(anatomy, [], size=128, rng=np.random.default_rng(2))
    assert np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() > 5


def test_images_of_one_patient_look_more_alike_than_images_of_two() -> None:
    """The anatomy carries identity: same-patient pairs correlate better than cross-patient pairs."""

    def small(anatomy: Anatomy, seed: int) -> np.ndarray:
        img, _ = render(anatomy, [], size=128, rng=np.random.default_rng(seed))
        return cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()

    same, cross = [], []
    for k in range(8):
        a, b = _anatomy(200 + k), _anatomy(300 + k)
        same.append(np.corrcoef(small(a, 1), small(a, 2))[0, 1])
        cross.append(np.corrcoef(small(a, 1), small(b, 2))[0, 1])
    assert np.mean(same) > np.mean(cross)
