"""Cityscapes polygon rasterisation: objects marked deleted are skipped (cityscapesscripts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gmmseg.data.converters import rasterize_cityscapes_polygons

pytestmark = pytest.mark.cpu_only("label files are converted with numpy and Pillow")


def write_polygons(path: Path, objects: list[dict]) -> Path:
    path.write_text(json.dumps({"imgHeight": 6, "imgWidth": 8, "objects": objects}))
    return path


def test_deleted_objects_are_not_drawn(tmp_path: Path) -> None:
    road = {"label": "road", "polygon": [[0, 0], [7, 0], [7, 5], [0, 5]]}
    car = {"label": "car", "polygon": [[2, 1], [5, 1], [5, 4], [2, 4]], "deleted": 1}
    kept = {"label": "person", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]], "deleted": 0}
    # A deleted object is skipped before its label is looked up, as in cityscapesscripts.
    junk = {"label": "not-a-label", "polygon": [[0, 0], [1, 0], [1, 1]], "deleted": 1}
    path = write_polygons(tmp_path / "a_gtFine_polygons.json", [road, car, kept, junk])
    out = rasterize_cityscapes_polygons(path, "label_ids")
    assert not (out == 26).any()  # the deleted car is absent
    assert (out == 24).sum() == 4 and (out == 7).sum() == 48 - 4
    plain = write_polygons(tmp_path / "b_gtFine_polygons.json", [road, kept])
    assert np.array_equal(rasterize_cityscapes_polygons(plain, "label_ids"), out)
    # Without the flag the car would be drawn: the test would notice a regression.
    drawn = write_polygons(tmp_path / "c_gtFine_polygons.json", [road, {**car, "deleted": 0}])
    assert (rasterize_cityscapes_polygons(drawn, "train_ids") == 13).sum() > 0


def test_unknown_label_still_raises(tmp_path: Path) -> None:
    path = write_polygons(tmp_path / "d_gtFine_polygons.json", [{"label": "x", "polygon": []}])
    with pytest.raises(ValueError, match="unknown Cityscapes label 'x'"):
        rasterize_cityscapes_polygons(path)
