"""Tests for denseclip.metrics: hand-computed cases, then a randomized comparison with a reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from denseclip.metrics import SegMetric, class_coverage, compute_metrics, format_table, intersect_and_union

NAN = float("nan")


def areas(pred, label, num_classes, **kw) -> list[list[float]]:
    return [a.tolist() for a in intersect_and_union(np.array(pred), np.array(label), num_classes, **kw)]


def metric_of(pred, label, num_classes, **kw) -> dict:
    m = SegMetric(num_classes, **kw)
    m.update(np.array(pred), np.array(label))
    return m.compute()


# ------------------------------------------------------------------------------------ hand cases

LABEL_3CLS = [[0, 0, 1, 1],
              [0, 2, 2, 1],
              [2, 2, 2, 1]]  # fmt: skip


def test_perfect_prediction_is_all_ones():
    # class areas: 0 -> 3 px, 1 -> 4 px, 2 -> 5 px; pred == label so intersect == union == both
    assert areas(LABEL_3CLS, LABEL_3CLS, 3) == [[3, 4, 5]] * 4
    r = metric_of(LABEL_3CLS, LABEL_3CLS, 3)
    assert r["aAcc"] == 1 and r["mIoU"] == 1 and r["mAcc"] == 1
    assert r["IoU"] == [1, 1, 1] and r["Acc"] == [1, 1, 1]
    assert r["num_pixels"] == 12


# 255 = ignored; the prediction is wrong-or-right there, it must not matter.
IGN_LABEL = [[0, 0, 1, 255],
             [0, 1, 1, 255],
             [1, 1, 255, 255]]  # fmt: skip
IGN_PRED = [[0, 1, 1, 1],
            [0, 1, 0, 0],
            [1, 1, 1, 0]]  # fmt: skip


def test_ignore_index_pixels_do_not_count():
    # 8 valid pixels. label: c0 = 3, c1 = 5. pred on valid pixels: c0 = 3 ((0,0),(1,0),(1,2)), c1 = 5.
    # intersect: c0 = 2 ((0,0),(1,0)), c1 = 4. union: c0 = 3+3-2 = 4, c1 = 5+5-4 = 6.
    assert areas(IGN_PRED, IGN_LABEL, 2) == [[2, 4], [4, 6], [3, 5], [3, 5]]
    r = metric_of(IGN_PRED, IGN_LABEL, 2)
    assert r["IoU"] == pytest.approx([2 / 4, 4 / 6])
    assert r["Acc"] == pytest.approx([2 / 3, 4 / 5])
    assert r["aAcc"] == pytest.approx(6 / 8)
    assert r["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # 0.58333
    assert r["mAcc"] == pytest.approx((2 / 3 + 4 / 5) / 2)  # 0.73333
    # changing the prediction on ignored pixels changes nothing
    other = np.array(IGN_PRED)
    other[np.array(IGN_LABEL) == 255] = 0
    assert areas(other, IGN_LABEL, 2) == areas(IGN_PRED, IGN_LABEL, 2)
    # a custom ignore_index: now 255 is an out-of-range label (not counted in label area) while
    # the predictions there do count; and label 1 is ignored instead.
    # valid = label in {0, 255}: 3 px of 0 (pred 0,1,0) + 4 px of 255 (pred 1,0,1,0)
    # -> pred c0 = 2+2 = 4, c1 = 1+2 = 3; label c0 = 3, c1 = 0; intersect 2, 0; union 5, 3
    assert areas(IGN_PRED, IGN_LABEL, 2, ignore_index=1) == [[2, 0], [5, 3], [4, 3], [3, 0]]
    # ignore_index=None keeps every pixel (same counts here since 255 is out of range anyway)
    assert areas(IGN_PRED, IGN_LABEL, 2, ignore_index=None)[3] == [3, 5]


def test_reduce_zero_label():
    # raw 0 -> ignored, 1..3 -> classes 0..2, 255 stays ignored.
    label = [[0, 1, 1, 2],
             [0, 1, 2, 2],
             [255, 3, 3, 2]]  # fmt: skip
    pred = [[2, 0, 1, 1],
            [0, 0, 1, 0],
            [0, 2, 1, 1]]  # fmt: skip
    # 9 valid px. label: c0 = 3, c1 = 4, c2 = 2. pred there: c0 = 3, c1 = 5, c2 = 1.
    # intersect: c0 = 2, c1 = 3, c2 = 1 -> union: 4, 6, 2 -> IoU 1/2 each.
    assert areas(pred, label, 3, reduce_zero_label=True) == [[2, 3, 1], [4, 6, 2], [3, 5, 1], [3, 4, 2]]
    r = metric_of(pred, label, 3, reduce_zero_label=True)
    assert r["IoU"] == pytest.approx([0.5, 0.5, 0.5])
    assert r["Acc"] == pytest.approx([2 / 3, 3 / 4, 1 / 2])
    assert r["aAcc"] == pytest.approx(6 / 9)


def test_absent_class_is_nan_and_excluded_from_means():
    label = [[0, 0, 1, 1]] * 3
    pred = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]
    # c0: label 6, pred 5, inter 5, union 6; c1: label 6, pred 7, inter 6, union 7; c2: nothing.
    r = metric_of(pred, label, 3)
    assert r["IoU"][:2] == pytest.approx([5 / 6, 6 / 7]) and math.isnan(r["IoU"][2])
    assert r["Acc"][:2] == pytest.approx([5 / 6, 1.0]) and math.isnan(r["Acc"][2])
    assert r["mIoU"] == pytest.approx((5 / 6 + 6 / 7) / 2)
    assert r["mAcc"] == pytest.approx((5 / 6 + 1) / 2)


def test_class_only_predicted_has_zero_iou_and_nan_acc():
    # class 1 is predicted once but never labelled: IoU 0 (union 1) counts in mIoU, Acc is NaN.
    r = metric_of([[0, 1]], [[0, 0]], 2)
    assert r["IoU"] == [0.5, 0.0] and r["mIoU"] == 0.25
    assert r["Acc"][0] == 0.5 and math.isnan(r["Acc"][1]) and r["mAcc"] == 0.5


def test_out_of_range_values_are_not_counted():
    label = [[0, 0, 1, 1]] * 3
    pred = [[0, 7, 1, 1],
            [0, 0, -1, 1],
            [0, 0, 1, 1]]  # fmt: skip
    # the 7 and the -1 fall in no bin: pred c0 = 5, c1 = 5; intersect 5, 5; labels 6, 6.
    assert areas(pred, label, 2) == [[5, 5], [6, 6], [5, 5], [6, 6]]
    r = metric_of(pred, label, 2)
    assert r["IoU"] == pytest.approx([5 / 6, 5 / 6]) and r["aAcc"] == pytest.approx(10 / 12)
    # an out-of-range (non-ignored) label counts for nothing but its prediction still counts
    assert areas([[0]], [[9]], 2) == [[0, 0], [1, 0], [1, 0], [0, 0]]


def test_bincount_matches_mmseg_histc():
    # mmseg counts with torch.histc(x.float(), bins=n, min=0, max=n-1); we use an integer bincount
    rng = np.random.default_rng(0)
    for n in (2, 3, 19, 150):
        x = torch.from_numpy(rng.integers(-3, n + 3, size=5000))
        ours = intersect_and_union(x, x, n, ignore_index=None)[2]
        histc = torch.histc(x.float(), bins=n, min=0, max=n - 1).double()
        assert torch.equal(ours, histc)


# ------------------------------------------------------------------------- accumulation and inputs

def random_pair(rng, shape, num_classes, ignore_frac=0.1):
    label = rng.integers(0, num_classes, size=shape).astype(np.uint8)
    label[rng.random(shape) < ignore_frac] = 255
    pred = rng.integers(0, num_classes, size=shape).astype(np.int64)
    return pred, label


def test_accumulation_equals_concatenation():
    rng = np.random.default_rng(1)
    pairs = [random_pair(rng, s, 4) for s in [(5, 7), (3, 3), (8, 2)]]
    m = SegMetric(4)
    for p, lab in pairs:
        m.update(p, lab)
    cat_pred = np.concatenate([p.ravel() for p, _ in pairs])[None]
    cat_label = np.concatenate([lab.ravel() for _, lab in pairs])[None]
    whole = torch.stack(intersect_and_union(cat_pred, cat_label, 4))
    assert torch.equal(m.areas, whole)
    # a list of differently-sized images in one call gives the same
    m2 = SegMetric(4)
    m2.update([p for p, _ in pairs], [lab for _, lab in pairs])
    assert torch.equal(m2.areas, whole)


def test_batched_update_equals_per_image():
    rng = np.random.default_rng(2)
    pred, label = random_pair(rng, (3, 6, 5), 5)
    batched, single = SegMetric(5, reduce_zero_label=True), SegMetric(5, reduce_zero_label=True)
    batched.update(torch.from_numpy(pred), torch.from_numpy(label))
    for i in range(3):
        single.update(pred[i], label[i])
    assert torch.equal(batched.areas, single.areas)


def test_inputs_are_not_mutated():
    label = np.array([[0, 1, 2, 255], [3, 0, 1, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 2, 0], [1, 0, 1, 2]], dtype=np.int64)
    label_t = torch.from_numpy(label.astype(np.int64))
    saved, saved_pred, saved_t = label.copy(), pred.copy(), label_t.clone()
    intersect_and_union(pred, label, 3, reduce_zero_label=True)
    intersect_and_union(pred, label_t, 3, reduce_zero_label=True)
    assert np.array_equal(label, saved) and np.array_equal(pred, saved_pred)
    assert torch.equal(label_t, saved_t)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16])
def test_numpy_and_torch_inputs_agree(dtype):
    rng = np.random.default_rng(3)
    pred, label = random_pair(rng, (6, 9), 6)
    ref = intersect_and_union(pred, label.astype(np.int64), 6, reduce_zero_label=True)
    for p, lab in [(pred.astype(dtype), label.astype(dtype)),
                   (torch.from_numpy(pred.astype(dtype)), torch.from_numpy(label.astype(dtype))),
                   (torch.from_numpy(pred), label.astype(dtype))]:
        got = intersect_and_union(p, lab, 6, reduce_zero_label=True)
        assert all(g.dtype == torch.float64 and g.shape == (6,) for g in got)
        assert all(torch.equal(g, r) for g, r in zip(got, ref))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        intersect_and_union(np.zeros((3, 4), int), np.zeros((4, 3), int), 2)
    with pytest.raises(TypeError, match="argmax"):
        intersect_and_union(np.zeros((3, 4)), np.zeros((3, 4), int), 2)
    with pytest.raises(ValueError, match="num_classes"):
        SegMetric(0)
    with pytest.raises(ValueError, match="class_names"):
        SegMetric(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="lists"):
        SegMetric(2).update([np.zeros((2, 2), int)], np.zeros((2, 2), int))


# ------------------------------------------------------------------------------- state and output

def test_all_reduce_single_process(tmp_path):
    import torch.distributed as dist

    rng = np.random.default_rng(5)
    m = SegMetric(3)
    m.update(*random_pair(rng, (5, 5), 3))
    before = m.areas.clone()
    assert torch.equal(m.all_reduce().areas, before)  # not initialised: no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert torch.equal(m.all_reduce().areas, before)  # one rank: the sum is itself
    finally:
        dist.destroy_process_group()
    m.reset()
    assert m.areas.sum() == 0 and math.isnan(m.compute()["aAcc"])


def test_compute_with_class_names_and_table():
    names = ["sky", "road", "tree"]
    m = SegMetric(3, class_names=names)
    m.update(np.array([[0, 1]]), np.array([[0, 0]]))
    r = m.compute()
    assert r["class_names"] == names
    assert r["per_class"]["sky"]["IoU"] == 0.5 and math.isnan(r["per_class"]["tree"]["IoU"])
    assert set(r["per_class"]["road"]) == {"IoU", "Acc"}
    table = format_table(r)
    assert "sky" in table and "50.00" in table and "nan" in table and "mIoU: 25.00" in table
    assert "| 0 " in format_table(compute_metrics([1.0, 0], [2.0, 0], [1.0, 0], [2.0, 0]))
    with pytest.raises(ValueError, match="class names"):
        format_table(r, class_names=["a"])


# ---------------------------------------------------------------- randomized vs independent reference

def reference_areas(pred, label, n, ignore_index, reduce_zero_label):
    """Independent formulation: an (n+1) x (n+1) confusion matrix whose last row/column collects
    every out-of-range value, built with a single np.bincount."""
    label = label.astype(np.int64)
    pred = pred.astype(np.int64)
    if reduce_zero_label:
        label = np.where(label == 0, 255, label) - 1
        label = np.where(label == 254, 255, label)
    keep = label != ignore_index
    lab, prd = label[keep], pred[keep]
    lab = np.where((lab >= 0) & (lab < n), lab, n)
    prd = np.where((prd >= 0) & (prd < n), prd, n)
    cm = np.bincount((n + 1) * lab + prd, minlength=(n + 1) ** 2).reshape(n + 1, n + 1)
    inter = np.diag(cm)[:n].astype(float)
    pred_area = cm[:, :n].sum(axis=0).astype(float)
    label_area = cm[:n, :].sum(axis=1).astype(float)
    return inter, pred_area + label_area - inter, pred_area, label_area


@pytest.mark.parametrize("seed", range(6))
def test_random_against_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    reduce = bool(seed % 2)
    ignore_index = 255
    metric = SegMetric(n, ignore_index=ignore_index, reduce_zero_label=reduce)
    totals = np.zeros((4, n))
    for _ in range(int(rng.integers(1, 5))):
        shape = tuple(int(s) for s in rng.integers(1, 20, size=2))
        label = rng.integers(0, n + 3, size=shape)  # some labels out of range (not ignored)
        label[rng.random(shape) < 0.15] = ignore_index
        pred = rng.integers(-1, n + 2, size=shape)  # some predictions out of range
        metric.update(pred, label.astype(np.uint8))
        totals += np.stack(reference_areas(pred, label, n, ignore_index, reduce))
    np.testing.assert_array_equal(metric.areas.numpy(), totals)

    inter, union, pred_a, label_a = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / label_a
    r = metric.compute()
    np.testing.assert_allclose(r["IoU"], iou, equal_nan=True)
    np.testing.assert_allclose(r["Acc"], acc, equal_nan=True)
    assert r["aAcc"] == pytest.approx(inter.sum() / label_a.sum())
    for key, ref in [("mIoU", iou), ("mAcc", acc)]:
        if np.isnan(ref).all():
            assert math.isnan(r[key])
        else:
            assert r[key] == pytest.approx(np.nanmean(ref))


def test_class_coverage_counts_every_pixel_and_skips_other_values():
    lab = np.array([[0, 0, 1, 255], [2, -1, 1, 1]])
    assert class_coverage(lab, 3).tolist() == pytest.approx([2 / 8, 3 / 8, 1 / 8])
    assert class_coverage(torch.from_numpy(lab), 3).tolist() == pytest.approx([2 / 8, 3 / 8, 1 / 8])
    assert class_coverage(np.zeros((0, 4), int), 2).tolist() == [0.0, 0.0]
