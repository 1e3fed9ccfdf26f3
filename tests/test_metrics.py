"""Tests for denseclip.metrics: hand-computed cases, then a randomized comparison with a reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from denseclip.metrics import SegMetric, compute_metrics, format_table, intersect_and_union

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


def test_label_map():
    # raw ids 3 and 4 are remapped to classes 0 and 1 before evaluation
    label = [[3, 3, 4, 4],
             [3, 4, 4, 255],
             [0, 1, 3, 4]]  # fmt: skip
    pred = [[0, 0, 1, 1],
            [0, 1, 0, 1],
            [0, 1, 1, 1]]  # fmt: skip
    # mapped label: [[0,0,1,1],[0,1,1,255],[0,1,0,1]] -> 11 valid px, label c0 = 5, c1 = 6,
    # pred c0 = 5, c1 = 6, intersect c0 = 4, c1 = 5, union c0 = 6, c1 = 7.
    got = areas(pred, label, 2, label_map={3: 0, 4: 1})
    assert got == [[4, 5], [6, 7], [5, 6], [5, 6]]
    r = metric_of(pred, label, 2, label_map={3: 0, 4: 1})
    assert r["IoU"] == pytest.approx([4 / 6, 5 / 7])
    assert r["aAcc"] == pytest.approx(9 / 11)
    # a swap {0: 1, 1: 0} does not chain (both keys are looked up in the original label)
    assert areas([[1, 0]], [[0, 1]], 2, label_map={0: 1, 1: 0})[0] == [1, 1]


def test_label_map_then_reduce_zero_label():
    # label_map runs first: 7 -> 1, then reduce_zero_label turns 1 into class 0 and 0 into ignore
    assert areas([[0, 0]], [[7, 0]], 2, label_map={7: 1}, reduce_zero_label=True) == [
        [1, 0], [1, 0], [1, 0], [1, 0]]


def test_absent_class_is_nan_and_excluded_from_means():
    label = [[0, 0, 1, 1]] * 3
    pred = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]
    # c0: label 6, pred 5, inter 5, union 6; c1: label 6, pred 7, inter 6, union 7; c2: nothing.
    r = metric_of(pred, label, 3)
    assert r["IoU"][:2] == pytest.approx([5 / 6, 6 / 7]) and math.isnan(r["IoU"][2])
    assert r["Acc"][:2] == pytest.approx([5 / 6, 1.0]) and math.isnan(r["Acc"][2])
    assert r["mIoU"] == pytest.approx((5 / 6 + 6 / 7) / 2)
    assert r["mAcc"] == pytest.approx((5 / 6 + 1) / 2)
    # mmseg's nan_to_num replaces NaN before averaging: the absent class then counts as 0
    r0 = metric_of(pred, label, 3, nan_to_num=0)
    assert r0["IoU"][2] == 0 and r0["mIoU"] == pytest.approx((5 / 6 + 6 / 7) / 3)


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


def test_fscore_and_dice_hand_values():
    # areas of the reduce_zero_label case: inter [2,3,1], union [4,6,2], pred [3,5,1], label [3,4,2]
    inter, union, pred, label = (torch.tensor(v, dtype=torch.float64)
                                 for v in ([2, 3, 1], [4, 6, 2], [3, 5, 1], [3, 4, 2]))
    r = compute_metrics(inter, union, pred, label, metrics=["mIoU", "mDice", "mFscore"], beta=2)
    # Dice = 2I / (P + L) = 4/6, 6/9, 2/3
    np.testing.assert_allclose(r["Dice"], [2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r["Precision"], [2 / 3, 3 / 5, 1])  # I / P
    np.testing.assert_allclose(r["Recall"], [2 / 3, 3 / 4, 1 / 2])  # I / L
    # F2 = 5PR / (4P + R): c0 = 2/3; c1 = 5*.45/(2.4+.75) = 5/7; c2 = 2.5/4.5 = 5/9
    np.testing.assert_allclose(r["Fscore"], [2 / 3, 5 / 7, 5 / 9])
    assert r["mFscore"] == pytest.approx((2 / 3 + 5 / 7 + 5 / 9) / 3)
    assert r["mPrecision"] == pytest.approx((2 / 3 + 3 / 5 + 1) / 3)
    assert r["aAcc"] == pytest.approx(6 / 9)
    # beta=1: the F-score is the Dice
    r1 = compute_metrics(inter, union, pred, label, metrics="mFscore")
    np.testing.assert_allclose(r1["Fscore"], r["Dice"])
    # label_map case: Dice c0 = 8/10, c1 = 10/12
    r2 = metric_of([[0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 1, 1]], [[3, 3, 4, 4], [3, 4, 4, 255], [0, 1, 3, 4]],
                   2, label_map={3: 0, 4: 1}, metrics="mDice")
    assert r2["Dice"] == pytest.approx([0.8, 10 / 12]) and r2["mDice"] == pytest.approx((0.8 + 10 / 12) / 2)
    # P = R = 0 (class predicted and labelled but never hit): F-score NaN, like mmseg
    r3 = compute_metrics([0.0], [2.0], [1.0], [1.0], metrics="mFscore")
    assert r3["Precision"][0] == 0 and math.isnan(r3["Fscore"][0])


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
    assert torch.equal(m.state(), whole)
    # a list of differently-sized images in one call gives the same
    m2 = SegMetric(4)
    m2.update([p for p, _ in pairs], [lab for _, lab in pairs])
    assert torch.equal(m2.state(), whole)


def test_batched_update_equals_per_image():
    rng = np.random.default_rng(2)
    pred, label = random_pair(rng, (3, 6, 5), 5)
    batched, single = SegMetric(5, reduce_zero_label=True), SegMetric(5, reduce_zero_label=True)
    batched.update(torch.from_numpy(pred), torch.from_numpy(label))
    for i in range(3):
        single.update(pred[i], label[i])
    assert torch.equal(batched.state(), single.state())


def test_inputs_are_not_mutated():
    label = np.array([[0, 1, 2, 255], [3, 0, 1, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 2, 0], [1, 0, 1, 2]], dtype=np.int64)
    label_t = torch.from_numpy(label.astype(np.int64))
    saved, saved_pred, saved_t = label.copy(), pred.copy(), label_t.clone()
    intersect_and_union(pred, label, 3, label_map={1: 2, 3: 0}, reduce_zero_label=True)
    intersect_and_union(pred, label_t, 3, label_map={1: 2}, reduce_zero_label=True)
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
    with pytest.raises(KeyError, match="mDice"):
        SegMetric(3, metrics=["mIoU", "mAP"])
    with pytest.raises(ValueError, match="class_names"):
        SegMetric(3, class_names=["a", "b"])
    with pytest.raises(TypeError, match="lists"):
        SegMetric(2).update([np.zeros((2, 2), int)], np.zeros((2, 2), int))


# ------------------------------------------------------------------------------- state and output

def test_state_merge_and_reset():
    rng = np.random.default_rng(4)
    a, b = random_pair(rng, (7, 7), 3), random_pair(rng, (4, 9), 3)
    m_a, m_b, m_ab = SegMetric(3), SegMetric(3), SegMetric(3)
    m_a.update(*a)
    m_b.update(*b)
    m_ab.update(*a)
    m_ab.update(*b)
    s = m_a.state()
    assert s.shape == (4, 3) and s.dtype == torch.float64
    s.zero_()  # state() is a copy
    assert m_a.state().sum() > 0
    assert torch.equal(SegMetric(3).merge(m_a).merge(m_b).state(), m_ab.state())
    m = SegMetric(3)
    m.add_state(m_a.state())
    m.add_state(m_b.state().numpy())
    assert torch.equal(m.state(), m_ab.state())
    m.load_state(m_a.state())
    assert torch.equal(m.state(), m_a.state())
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        m.load_state(torch.zeros(4, 5))
    m.reset()
    assert m.state().sum() == 0 and math.isnan(m.compute()["aAcc"])


def test_all_reduce_single_process(tmp_path):
    import torch.distributed as dist

    rng = np.random.default_rng(5)
    m = SegMetric(3)
    m.update(*random_pair(rng, (5, 5), 3))
    before = m.state()
    assert torch.equal(m.all_reduce().state(), before)  # not initialised: no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert torch.equal(m.all_reduce().state(), before)  # one rank: the sum is itself
    finally:
        dist.destroy_process_group()


def test_compute_with_class_names_and_table():
    names = ["sky", "road", "tree"]
    m = SegMetric(3, class_names=names, metrics=("mIoU", "mFscore"))
    m.update(np.array([[0, 1]]), np.array([[0, 0]]))
    r = m.compute()
    assert r["class_names"] == names
    assert r["per_class"]["sky"]["IoU"] == 0.5 and math.isnan(r["per_class"]["tree"]["IoU"])
    assert set(r["per_class"]["road"]) == {"IoU", "Acc", "Fscore", "Precision", "Recall"}
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
    metric = SegMetric(n, ignore_index=ignore_index, reduce_zero_label=reduce,
                       metrics=("mIoU", "mDice", "mFscore"))
    totals = np.zeros((4, n))
    for _ in range(int(rng.integers(1, 5))):
        shape = tuple(int(s) for s in rng.integers(1, 20, size=2))
        label = rng.integers(0, n + 3, size=shape)  # some labels out of range (not ignored)
        label[rng.random(shape) < 0.15] = ignore_index
        pred = rng.integers(-1, n + 2, size=shape)  # some predictions out of range
        metric.update(pred, label.astype(np.uint8))
        totals += np.stack(reference_areas(pred, label, n, ignore_index, reduce))
    np.testing.assert_array_equal(metric.state().numpy(), totals)

    inter, union, pred_a, label_a = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / label_a
        dice = 2 * inter / (pred_a + label_a)
        prec, rec = inter / pred_a, inter / label_a
        f1 = 2 * prec * rec / (prec + rec)
    r = metric.compute()
    np.testing.assert_allclose(r["IoU"], iou, equal_nan=True)
    np.testing.assert_allclose(r["Acc"], acc, equal_nan=True)
    np.testing.assert_allclose(r["Dice"], dice, equal_nan=True)
    np.testing.assert_allclose(r["Fscore"], f1, equal_nan=True)
    assert r["aAcc"] == pytest.approx(inter.sum() / label_a.sum())
    for key, ref in [("mIoU", iou), ("mAcc", acc), ("mDice", dice), ("mFscore", f1),
                     ("mPrecision", prec), ("mRecall", rec)]:
        if np.isnan(ref).all():
            assert math.isnan(r[key])
        else:
            assert r[key] == pytest.approx(np.nanmean(ref))
