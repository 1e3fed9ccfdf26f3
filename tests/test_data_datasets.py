"""Datasets on disk (ADE20K, COCO-Stuff, folder), their validation errors, and the synthetic task."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from denseclip.data.ade20k import ADE20KDataset
from denseclip.data.base import DatasetError, read_label, reduce_zero_label
from denseclip.data.coco_stuff import COCOStuffDataset
from denseclip.data.folder import FolderDataset
from denseclip.data.synthetic import SyntheticSegDataset, class_palette, make_sample, write_folder_dataset
from denseclip.vocab import ADE20K_CLASSES, COCO_STUFF_CLASSES


def _save_rgb(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def _save_mask(path, arr, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), "P" if palette else "L")
    if palette:
        img.putpalette(class_palette(8))
    img.save(path)


@pytest.fixture
def ade_root(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in range(2):
            stem = f"{prefix}_{i + 1:08d}"
            _save_rgb(root / "images" / split / f"{stem}.jpg", 12, 16, i)
            mask = np.zeros((12, 16), np.uint8)
            mask[:, 4:8], mask[:, 8:12], mask[:, 12:] = 1, 150, 75
            _save_mask(root / "annotations" / split / f"{stem}.png", mask)
    return root


def test_ade20k_layout_and_label_reduction(ade_root):
    ds = ADE20KDataset(ade_root, "training")
    assert len(ds) == 2 and ds.class_names == ADE20K_CLASSES and ds.num_classes == 150
    s = ds[0]
    assert s["image"].shape == (12, 16, 3) and s["image"].dtype == np.uint8
    assert s["name"] == "ADE_train_00000001"
    # 0 ("other") -> 255 ignore, 1..150 -> 0..149
    assert (s["label"][:, :4] == 255).all() and (s["label"][:, 4:8] == 0).all()
    assert (s["label"][:, 8:12] == 149).all() and (s["label"][:, 12:] == 74).all()
    assert len(ADE20KDataset(ade_root.parent, "val")) == 2  # the folder above the archive works, "val" alias
    ds.validate("full")
    ds.validate("fast")


def test_reduce_zero_label_keeps_ignore():
    out = reduce_zero_label(np.array([0, 1, 2, 150, 255]))
    assert out.tolist() == [255, 0, 1, 149, 255]


def test_ade20k_errors_name_the_file(ade_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        ADE20KDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        ADE20KDataset(ade_root, "test")
    bad = np.full((12, 16), 151, np.uint8)
    _save_mask(ade_root / "annotations" / "training" / "ADE_train_00000002.png", bad)
    with pytest.raises(DatasetError, match=r"ADE_train_00000002\.png has label values \[150\]"):
        ADE20KDataset(ade_root, "training").validate("full")
    ADE20KDataset(ade_root, "training").validate("fast")  # fast mode reads headers only
    (ade_root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(DatasetError, match=r"image without its mask: .*ADE_val_00000001\.jpg"):
        ADE20KDataset(ade_root, "validation")


def test_coco_stuff_layout(tmp_path):
    root = tmp_path / "coco_stuff164k"
    _save_rgb(root / "images" / "val2017" / "000000000139.jpg", 10, 14)
    mask = np.full((10, 14), 255, np.uint8)
    mask[:5] = 170
    _save_mask(root / "annotations" / "val2017" / "000000000139_labelTrainIds.png", mask)
    ds = COCOStuffDataset(root, "val")
    assert ds.class_names == COCO_STUFF_CLASSES and len(ds) == 1
    lab = ds[0]["label"]
    assert (lab[:5] == 170).all() and (lab[5:] == 255).all()
    ds.validate()
    with pytest.raises(FileNotFoundError, match="train2017"):
        COCOStuffDataset(root, "train")


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "my_data"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    _save_rgb(root / "images" / "a.jpg", 8, 10, 1)
    _save_rgb(root / "images" / "b.png", 8, 10, 2)
    pal = np.zeros((8, 10), np.uint8)
    pal[2:6, 2:6] = 2
    pal[0, 0] = 255
    _save_mask(root / "masks" / "a.png", pal, palette=True)
    single = np.ones((8, 10), np.uint8)
    _save_mask(root / "masks" / "b.png", single)
    return root


def test_folder_dataset_palette_and_single_channel(folder_root):
    ds = FolderDataset(folder_root)
    assert ds.class_names == ("background", "cat", "dog") and len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["name"] == "a" and a["label"][3, 3] == 2 and a["label"][0, 0] == 255 and a["label"][7, 9] == 0
    assert (b["label"] == 1).all()  # single-channel PNG values are class ids
    ds.validate("full")
    # palette indices are read, not the palette colours
    assert Image.open(folder_root / "masks" / "a.png").mode == "P"
    assert read_label(folder_root / "masks" / "a.png")[3, 3] == 2
    # class names given explicitly, reduce_zero_label
    ds2 = FolderDataset(folder_root, class_names="cat, dog", reduce_zero_label=True)
    assert ds2.class_names == ("cat", "dog") and ds2[1]["label"].max() == 0 and ds2[0]["label"][0, 0] == 255


def test_folder_dataset_splits(folder_root):
    (folder_root / "splits").mkdir()
    (folder_root / "splits" / "val.txt").write_text("b\n")
    assert [s.image.name for s in FolderDataset(folder_root, "val").samples] == ["b.png"]
    with pytest.raises(FileNotFoundError, match="train"):
        FolderDataset(folder_root, "train")
    (folder_root / "splits" / "bad.txt").write_text("zzz\n")
    with pytest.raises(DatasetError, match="'zzz' listed but not found"):
        FolderDataset(folder_root, "bad")


def test_folder_dataset_missing_pieces(folder_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root folder not found"):
        FolderDataset(tmp_path / "missing")
    (folder_root / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        FolderDataset(folder_root)
    (folder_root / "classes.txt").write_text("a\nb\nc\n")
    (folder_root / "masks" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"image without its mask: .*b\.png"):
        FolderDataset(folder_root)


@pytest.mark.parametrize("case", ["size", "range", "garbage", "empty", "rgb_mask", "truncated"])
def test_validate_names_the_bad_file(folder_root, case):
    ds = FolderDataset(folder_root)
    img, mask = folder_root / "images" / "b.png", folder_root / "masks" / "b.png"
    fast_catches = True
    if case == "size":
        _save_mask(mask, np.ones((9, 10), np.uint8))
        pattern = r"image .*b\.png is 8x10 but its mask .*b\.png is 9x10"
    elif case == "range":
        _save_mask(mask, np.full((8, 10), 7, np.uint8))
        pattern, fast_catches = r"mask .*b\.png has label values \[7\] outside the 3 classes", False
    elif case == "garbage":
        img.write_bytes(b"this is not a png")
        pattern = r"image file is unreadable .*b\.png"
    elif case == "empty":
        mask.write_bytes(b"")
        pattern = r"mask file is empty .*b\.png"
    elif case == "rgb_mask":
        rgb = np.zeros((8, 10, 3), np.uint8)
        rgb[..., 0] = 200
        Image.fromarray(rgb).save(mask)
        pattern, fast_catches = r"mask .*b\.png is a colour \(RGB\) image", False
    else:  # truncated image data: the header reads, decoding fails
        data = (folder_root / "images" / "a.jpg").read_bytes()
        (folder_root / "images" / "a.jpg").write_bytes(data[:-40])
        pattern, fast_catches = r"a\.jpg", False
    with pytest.raises(DatasetError, match=pattern) as err:
        ds.validate("full")
    assert len(err.value.problems) == 1
    if fast_catches:
        with pytest.raises(DatasetError, match=pattern):
            ds.validate("fast")
    else:
        ds.validate("fast")
    ds.validate("none")


def test_synthetic_is_deterministic_and_easy():
    a, b = SyntheticSegDataset(4, seed=3), SyntheticSegDataset(4, seed=3)
    for i in range(4):
        assert np.array_equal(a[i]["image"], b[i]["image"]) and np.array_equal(a[i]["label"], b[i]["label"])
    assert not np.array_equal(a[0]["image"], SyntheticSegDataset(4, seed=4)[0]["image"])
    img, lab = make_sample(0, 3, (40, 50), num_classes=5)
    assert img.shape == (40, 50, 3) and img.dtype == np.uint8 and lab.shape == (40, 50)
    assert set(np.unique(lab)) <= set(range(5)) and {0, 1} <= set(np.unique(lab))
    # classes are separable by colour: the per-class mean colours are far apart
    means = {c: img[lab == c].mean(0) for c in np.unique(lab)}
    cs = sorted(means)
    assert min(np.abs(means[x] - means[y]).max() for x in cs for y in cs if x < y) > 30
    with pytest.raises(IndexError):
        a[4]


def test_write_folder_dataset_round_trip(tmp_path):
    root = write_folder_dataset(tmp_path / "syn", num_train=3, num_val=2, image_format="png")
    train, val = FolderDataset(root, "train"), FolderDataset(root, "val")
    assert (len(train), len(val)) == (3, 2) and train.class_names == SyntheticSegDataset(1).class_names
    train.validate("full")
    val.validate("full")
    ref = SyntheticSegDataset(3)
    assert np.array_equal(train[1]["label"], ref[1]["label"])
    assert np.array_equal(train[1]["image"], ref[1]["image"])
    assert Image.open(root / "masks" / "train" / f"{ref[0]['name']}.png").mode == "P"


def _save_turned_jpeg(path, h, w, orientation=6, seed=0):
    """A JPEG stored h x w with an EXIF orientation: loading (as any photo viewer) shows it turned."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(
        path, exif=exif.tobytes())


def test_exif_turned_image_is_checked_as_it_loads(folder_root):
    """A phone photo stored 8x10 with EXIF orientation 6 loads as 10x8: its 8x10 mask (drawn on the stored
    pixels) used to pass the header check and then kill training in a DataLoader worker."""
    (folder_root / "images" / "b.png").unlink()
    (folder_root / "masks" / "b.png").unlink()
    _save_turned_jpeg(folder_root / "images" / "a.jpg", 8, 10)
    ds = FolderDataset(folder_root)
    pattern = r"image .*a\.jpg is 10x8 but its mask .*a\.png is 8x10.*EXIF orientation 6.*stored pixels.*" \
              r"upright"
    for mode in ("fast", "full"):
        with pytest.raises(DatasetError, match=pattern):
            ds.validate(mode)
    with pytest.raises(ValueError, match=pattern):  # loading without validation names both files too
        ds[0]
    _save_mask(folder_root / "masks" / "a.png", np.ones((10, 8), np.uint8))  # drawn on the turned picture
    ds.validate("full")
    sample = ds[0]
    assert sample["image"].shape[:2] == sample["label"].shape == (10, 8)


def test_square_exif_turned_images_are_flagged(folder_root):
    (folder_root / "images" / "b.png").unlink()
    (folder_root / "masks" / "b.png").unlink()
    _save_turned_jpeg(folder_root / "images" / "a.jpg", 8, 8, orientation=8)
    _save_mask(folder_root / "masks" / "a.png", np.ones((8, 8), np.uint8))
    with pytest.warns(UserWarning, match=r"1 square image\(s\) .* EXIF rotation.*a\.jpg"):
        FolderDataset(folder_root).validate("fast")


@pytest.mark.parametrize("reduce", [False, True])
def test_labels_beyond_the_classes_stop_loading_with_the_file(folder_root, reduce):
    """With validation skipped (--skip-validate), a bad mask stops at the dataset, naming the file."""
    _save_mask(folder_root / "masks" / "b.png", np.full((8, 10), 9, np.uint8))
    ds = FolderDataset(folder_root, reduce_zero_label=reduce)
    ds[0]
    stored = " .after reducing zero label" if reduce else ""
    with pytest.raises(ValueError, match=rf"mask .*b\.png has label values \[{8 if reduce else 9}\] outside "
                                         rf"the 3 classes 0\.\.2{stored}"):
        ds[1]
