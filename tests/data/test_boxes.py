"""Box tables and their geometry: NIH's BBox_List_2017.csv format, boxes on the network input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrkit.core.errors import CxrkitError
from cxrkit.data.boxes import group_boxes, map_box, read_box_table
from cxrkit.data.imaging import resize_square
from cxrkit.evaluate.localization import box_mask

# ---- boxes: geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
@pytest.mark.parametrize(
    "hw,box,size",
    [
        ((300, 200), (40, 90, 100, 60), 64),  # portrait, shrink
        ((180, 320), (200, 30, 70, 100), 64),  # landscape, shrink
        ((100, 100), (10, 20, 30, 40), 64),  # square
        ((40, 60), (12, 8, 20, 16), 96),  # landscape, enlarge
    ],
)
def test_map_box_follows_resize_square(hw, box, size, fit):
    img = np.zeros(hw, np.uint8)
    x, y, w, h = box
    img[y : y + h, x : x + w] = 255
    small = resize_square(img, size, fit)
    rows, cols = np.nonzero(small >= 128)
    found = np.array(
        [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
    )
    np.testing.assert_allclose(map_box(box, hw, size, fit), found, atol=1.0)
    # and the box's pixels are where the bright pixels are
    mask = box_mask(map_box(box, hw, size, fit), (size, size))
    assert (mask == (small >= 128)).mean() > 0.98


def test_map_box_crop_outside_and_batches():
    boxes = np.array([[0, 0, 20, 10], [40, 90, 100, 60]], float)  # first one in the cropped band
    out = map_box(boxes, (300, 200), 64, "crop")
    assert out.shape == (2, 4)
    assert out[0, 3] == 0  # nothing of it is left
    with pytest.raises(CxrkitError, match="did you mean 'pad'"):
        map_box(boxes, (300, 200), 64, "padd")


# ---- box tables ----------------------------------------------------------------------------------


def test_read_box_table_nih_format(tmp_path: Path):
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00013118_008.png,Atelectasis,225.08,547.01,86.77,79.18,,,\n"
        "00014716_007.png,Infiltrate,686.10,272.94,105.86,175.77,,,\n"
        "00014716_007.png,Effusion,10,20,30,40,,,\n"
        "00014716_007.png,Effusion,50,60,30,40,,,\n"
    )
    t = read_box_table(csv)
    assert list(t.columns) == ["path", "finding", "x", "y", "w", "h"]
    assert t["path"].tolist()[:2] == ["00013118_008.png", "00014716_007.png"]
    assert t["finding"].tolist()[1:3] == ["Infiltration", "Pleural Effusion"]
    assert t["x"].iloc[0] == pytest.approx(225.08)
    grouped = group_boxes(t)
    assert grouped["00014716_007.png"]["Pleural Effusion"].shape == (2, 4)
    # with the dataset folder, names resolve to where the images are, as the NIH index stores them
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "images_001" / "images" / "00013118_008.png").write_bytes(b"")
    assert (
        read_box_table(csv, root=tmp_path)["path"].iloc[0] == "images_001/images/00013118_008.png"
    )
    with pytest.raises(CxrkitError, match="does not exist"):
        read_box_table(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Cardiomegly,1,2,3,4\n")
    with pytest.raises(CxrkitError, match="did you mean 'Cardiomegaly'"):
        read_box_table(bad)


@pytest.mark.realdata
def test_read_the_real_nih_box_list(shared_data: Path):
    path = shared_data / "labels" / "nih" / "BBox_List_2017.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    table = read_box_table(path)
    assert len(table) == 984 and table["path"].nunique() == 880
    assert set(table["finding"]) == {
        "Atelectasis",
        "Cardiomegaly",
        "Pleural Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
    }
    mapped = map_box(table[["x", "y", "w", "h"]].to_numpy(), (1024, 1024), 224, "pad")
    assert (mapped[:, 2:] > 0).all() and (mapped[:, :2] + mapped[:, 2:] <= 224 + 1e-9).all()
