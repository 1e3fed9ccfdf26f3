"""denseclip.evaluate: the metrics of predict() over a dataset, split over ranks like torchrun does."""

from __future__ import annotations

import pytest
import torch

import denseclip
from denseclip.data import SyntheticSegDataset
from denseclip.metrics import SegMetric


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = denseclip.build_model("denseclip-tiny-rn", pretrained=False).eval()
    return model, SyntheticSegDataset(length=5, seed=3)


def test_evaluate_equals_a_hand_loop(model_and_data):
    model, ds = model_and_data
    res = denseclip.evaluate(model, ds, progress=False)
    metric = SegMetric(5, ignore_index=ds.ignore_index)
    for i in range(len(ds)):
        s = ds[i]
        metric.update(denseclip.predict(model, s["image"]).labels, torch.as_tensor(s["label"]))
    ref = metric.compute()
    assert res["num_images"] == 5 and res["test"]["mode"] == model.cfg.test.mode
    for k in ("aAcc", "mIoU", "mAcc"):
        assert res[k] == pytest.approx(ref[k], nan_ok=True)


def test_ranks_split_the_images(model_and_data):
    model, ds = model_and_data
    parts = [denseclip.evaluate(model, ds, shard=(r, 2), progress=False) for r in (0, 1)]
    whole = denseclip.evaluate(model, ds, progress=False)
    assert parts[0]["num_pixels"] + parts[1]["num_pixels"] == whole["num_pixels"]
    assert denseclip.evaluate(model, ds, max_images=2, progress=False)["num_images"] == 2


def test_class_count_mismatch(model_and_data):
    model, _ = model_and_data
    with pytest.raises(ValueError, match="classes"):
        denseclip.evaluate(model, SyntheticSegDataset(length=2, class_names=("a", "b", "c")), progress=False)
