"""Tests of helpers.data: listing, hash splits, patient grouping, subsets and robust decoding."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers  # noqa: F401
from helpers import data

SHARED = data.SHARED_DATASETS_DIR
needs_flowers = pytest.mark.skipif(not (SHARED / "flower_photos").is_dir(), reason="needs ../shared/datasets")
needs_xray = pytest.mark.skipif(not (SHARED / "chest_xray").is_dir(), reason="needs ../shared/datasets")


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """find_dataset looks into the cache too: keep that one in tmp_path."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- keys and the hash rule
def test_split_key_drops_folder_and_nohash_suffix():
    assert data.split_key("/a/b/daisy/foo_nohash_12.jpg") == "foo"
    assert data.split_key("x/100080576_f52e8ee070_n.jpg") == "100080576_f52e8ee070_n.jpg"
    assert data.split_key("one/photo.jpg") == data.split_key("elsewhere/photo.jpg")


def test_which_split_matches_hand_computed_retrain_rule():
    key = "100080576_f52e8ee070_n.jpg"  # a real flower_photos/daisy file
    digest = hashlib.sha1(key.encode()).hexdigest()
    assert digest == "969016dda4aff58a624d69f052ecf531d8af9f96"
    # h mod 2**27 keeps the low 27 bits: the last 7 hex digits masked with 0x7FFFFFF.
    low_bits = int(digest[-7:], 16) & 0x7FFFFFF
    assert low_bits == 11509654
    percentage = 11509654 * 100 / (2**27 - 1)
    assert percentage == pytest.approx(8.5753605)
    assert data.which_split(key, 10, 10) == "validation"  # 8.58 < 10
    assert data.which_split(key, 5, 5) == "testing"       # 5 <= 8.58 < 10
    assert data.which_split(key, 5, 3) == "training"      # 8.58 >= 8
    assert data.which_split(key, 0, 0) == "training"
    assert data.which_split(key, 100, 0) == "validation"


def test_split_percentages_are_checked():
    with pytest.raises(ValueError, match="add up to at most 100"):
        data.split_files(["a.jpg"], validation_percentage=60, testing_percentage=50)
    with pytest.raises(ValueError, match=">= 0"):
        data.split_files(["a.jpg"], validation_percentage=-1)


def _touch_class_folder(root: Path, name: str, files: list[str]) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    for file in files:
        (root / name / file).touch()


def test_adding_files_never_moves_an_existing_file(tmp_path):
    _touch_class_folder(tmp_path, "cats", [f"cat{i}.jpg" for i in range(150)])
    _touch_class_folder(tmp_path, "dogs", [f"dog{i}_nohash_1.jpg" for i in range(150)])
    before = data.make_splits(tmp_path)
    _touch_class_folder(tmp_path, "cats", [f"newcat{i}.jpg" for i in range(100)])
    _touch_class_folder(tmp_path, "dogs", [f"dog{i}_nohash_2.jpg" for i in range(100)])
    after = data.make_splits(tmp_path)

    def split_of(splits):
        return {p.name: s for s, paths in splits.files.items() for p in paths}

    old, new = split_of(before), split_of(after)
    assert len(old) == 300 and len(new) == 500
    assert all(new[name] == split for name, split in old.items())
    # Files that differ only after _nohash_ stay together.
    assert all(new[f"dog{i}_nohash_2.jpg"] == new[f"dog{i}_nohash_1.jpg"] for i in range(100))
    assert {s for s in old.values()} == {"training", "validation", "testing"}


@needs_flowers
def test_flower_split_is_roughly_80_10_10():
    splits = data.make_splits(data.find_dataset("flowers"))
    assert splits.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    counts = splits.counts()
    assert {c: sum(n.values()) for c, n in counts.items()} == {
        "daisy": 633, "dandelion": 898, "roses": 641, "sunflowers": 699, "tulips": 799}
    total = sum(len(p) for p in splits.files.values())
    assert total == 3670
    fractions = {s: len(p) / total for s, p in splits.files.items()}
    assert fractions["training"] == pytest.approx(0.80, abs=0.02)
    assert fractions["validation"] == pytest.approx(0.10, abs=0.015)
    assert fractions["testing"] == pytest.approx(0.10, abs=0.015)
    for split, paths in splits.files.items():
        assert [splits.classes[i] for i in splits.labels[split]] == [p.parent.name for p in paths]
    # The same base name in two class folders (a known duplicate) lands in one split.
    dup = [s for s, paths in splits.files.items() for p in paths if p.name == "15922772266_1167a06620.jpg"]
    assert len(dup) == 2 and dup[0] == dup[1]


# ----------------------------------------------------------------------------- patients
def test_patient_id_examples():
    assert data.patient_id("x/person123_bacteria_4.jpeg") == "person123"
    assert data.patient_id("person447_virus_921_1.jpeg") == "person447"
    assert data.patient_id("IM-0115-0001.jpeg") == "IM-0115"
    assert data.patient_id("IM-0011-0001-0002.jpeg") == "IM-0011"
    assert data.patient_id("NORMAL2-IM-0123-0001.jpeg") == "NORMAL2-IM-0123"
    assert data.patient_id("scan_nohash_3.png") == "scan"  # unknown pattern: its own group


@needs_xray
def test_chest_xray_patient_counts():
    xray = data.find_dataset("chest_xray")
    train = data.list_images(xray / "train")
    groups = {c: {data.patient_id(p) for p in paths} for c, paths in train.items()}
    assert {c: len(paths) for c, paths in train.items()} == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert {c: len(g) for c, g in groups.items()} == {"NORMAL": 1211, "PNEUMONIA": 1635}
    assert not groups["NORMAL"] & groups["PNEUMONIA"]
    # Every file name matched a patient pattern (none fell back to its own name).
    assert all(not g.endswith(".jpeg") for gs in groups.values() for g in gs)


def _split_patients(splits):
    owners = {}
    for split, paths in splits.files.items():
        for p in paths:
            owners.setdefault(data.patient_id(p), set()).add(split)
    return owners


@needs_xray
def test_patient_grouping_keeps_each_patient_in_one_split():
    train = data.find_dataset("chest_xray") / "train"
    by_patient = data.make_splits(train, 20, 20, group_key=data.patient_id)
    assert all(len(s) == 1 for s in _split_patients(by_patient).values())
    assert len(by_patient.files["validation"]) > 600 and len(by_patient.files["testing"]) > 600
    # The per-file default does split patients: the grouping is what prevents it.
    by_file = data.make_splits(train, 20, 20)
    assert sum(len(s) > 1 for s in _split_patients(by_file).values()) > 100


@needs_xray
def test_official_test_folder_and_validation_carved_from_train():
    xray = data.find_dataset("chest_xray")
    splits = data.make_splits(xray / "train", 10, 0, test_image_dir=xray / "test", group_key=data.patient_id)
    counts = splits.counts()
    assert {c: n["testing"] for c, n in counts.items()} == {"NORMAL": 234, "PNEUMONIA": 390}
    assert {c: n["training"] + n["validation"] for c, n in counts.items()} == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert 0.07 < len(splits.files["validation"]) / 5216 < 0.13
    assert all(p.parent.parent.name == "test" for p in splits.files["testing"])
    val_patients = {data.patient_id(p) for p in splits.files["validation"]}
    assert not val_patients & {data.patient_id(p) for p in splits.files["training"]}


def test_mismatched_test_classes_are_reported(tmp_path):
    _touch_class_folder(tmp_path / "train", "a", ["1.jpg"])
    _touch_class_folder(tmp_path / "train", "b", ["2.jpg"])
    _touch_class_folder(tmp_path / "test", "a", ["3.jpg"])
    with pytest.raises(data.DatasetError, match="class folders differ"):
        data.make_splits(tmp_path / "train", test_image_dir=tmp_path / "test")


# ----------------------------------------------------------------------------- listing and subsets
def test_list_images_rules(tmp_path):
    _touch_class_folder(tmp_path, "b", ["2.JPG", "1.png", ".hidden.jpg", "notes.txt"])
    _touch_class_folder(tmp_path, "a", ["z.jpeg"])
    (tmp_path / "empty").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").touch()
    listed = data.list_images(tmp_path)
    assert list(listed) == ["a", "b"]
    assert [p.name for p in listed["b"]] == ["1.png", "2.JPG"]

    single = tmp_path / "a"
    assert list(data.list_images(single)) == ["a"]

    nested = tmp_path / "outer"
    _touch_class_folder(nested / "train", "x", ["1.jpg"])
    with pytest.raises(data.DatasetError, match="Its subfolders are train"):
        data.list_images(nested)
    with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
        data.list_images(tmp_path / "missing")


def test_subset_is_deterministic_and_nested(tmp_path):
    _touch_class_folder(tmp_path, "a", [f"a{i}.jpg" for i in range(200)])
    _touch_class_folder(tmp_path, "b", [f"b{i}.jpg" for i in range(30)])
    splits = data.make_splits(tmp_path)
    small = splits.subset(5, seed=1)
    assert small.files == splits.subset(5, seed=1).files
    assert small.files != splits.subset(5, seed=2).files
    counts = small.counts()
    full = splits.counts()
    for c in ("a", "b"):
        for s in data.SPLITS:
            assert counts[c][s] == min(5, full[c][s])
    larger = splits.subset(10, seed=1)
    for s in data.SPLITS:
        assert set(small.files[s]) <= set(larger.files[s])
        assert [small.classes[i] for i in small.labels[s]] == [p.parent.name for p in small.files[s]]
    only_train = splits.subset({"training": 3}, seed=1)
    assert only_train.counts()["a"]["training"] == 3
    assert only_train.files["testing"] == splits.files["testing"]


# ----------------------------------------------------------------------------- decoding odd files
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _save(im: Image.Image, path: Path, **kwargs) -> Path:
    im.save(path, **kwargs)
    return path


def test_plain_jpeg_shapes_and_range(tmp_path):
    path = _save(Image.new("RGB", (64, 48), (200, 100, 50)), tmp_path / "a.jpg", quality=95)
    square = data.load_image(path, 32)
    assert square.shape == (32, 32, 3) and square.dtype == np.float32
    np.testing.assert_allclose(square.mean(axis=(0, 1)), np.array([200, 100, 50]) / 255, atol=0.02)
    assert data.load_image(path, (20, 30)).shape == (20, 30, 3)
    # tf.numpy_function hands paths over as bytes
    np.testing.assert_array_equal(data.load_image(str(path).encode(), 32), square)
    with pytest.raises(data.BadImageError, match="file not found"):
        data.load_image(str(tmp_path / "gone.jpg").encode(), 32)


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    pixels = data.load_image(path, 16)
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), [1, 0, 0], atol=0.05)


def test_rgba_png_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (20, 20), (255, 0, 0, 255))
    im.paste((0, 0, 255, 0), (0, 0, 20, 10))  # top half fully transparent (blue but invisible)
    pixels = data.load_image(_save(im, tmp_path / "rgba.png"), 20)
    np.testing.assert_allclose(pixels[:10], 1.0)          # white, not blue or black
    np.testing.assert_allclose(pixels[10:], np.broadcast_to([1, 0, 0], (10, 20, 3)))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    pixels = data.load_image(path, (4, 4))
    np.testing.assert_allclose(pixels[0, :, 0], values[0] / 65535, atol=1e-6)
    assert np.all(pixels[..., 0] == pixels[..., 2])
    assert pixels.dtype == np.float32 and pixels.max() == 1.0


def test_greyscale_palette_and_bilevel(tmp_path):
    grey = data.load_image(_save(Image.new("L", (10, 10), 128), tmp_path / "g.png"), 8)
    np.testing.assert_allclose(grey, 128 / 255, atol=1e-6)
    palette = Image.new("RGB", (10, 10), RED).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    np.testing.assert_allclose(data.load_image(_save(palette, tmp_path / "p.png"), 8),
                               np.broadcast_to([1, 0, 0], (8, 8, 3)))
    bilevel = data.load_image(_save(Image.new("1", (10, 10), 1), tmp_path / "b.png"), 8)
    np.testing.assert_allclose(bilevel, 1.0)


def test_gif_first_frame_bmp_webp(tmp_path):
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    gif = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert Image.open(gif).n_frames == 2
    np.testing.assert_allclose(data.load_image(gif, 8), np.broadcast_to([1, 0, 0], (8, 8, 3)))
    bmp = _save(Image.new("RGB", (16, 16), BLUE), tmp_path / "x.bmp")
    np.testing.assert_allclose(data.load_image(bmp, 8), np.broadcast_to([0, 0, 1], (8, 8, 3)))
    webp = _save(Image.new("RGB", (16, 16), (0, 255, 0)), tmp_path / "x.webp", lossless=True)
    np.testing.assert_allclose(data.load_image(webp, 8), np.broadcast_to([0, 1, 0], (8, 8, 3)))


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))  # stored: red left half, blue right half, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": shown as a portrait
    path = _save(im, tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels = data.load_image(path, (40, 20))  # (height, width) of the displayed portrait
    np.testing.assert_allclose(pixels[:15].mean(axis=(0, 1)), [1, 0, 0], atol=0.05)   # red on top
    np.testing.assert_allclose(pixels[25:].mean(axis=(0, 1)), [0, 0, 1], atol=0.05)   # blue below
    unrotated = _save(im, tmp_path / "plain.jpg", quality=95)
    plain = data.load_image(unrotated, (20, 40))
    np.testing.assert_allclose(plain[:, :15].mean(axis=(0, 1)), [1, 0, 0], atol=0.05)


def test_extension_that_lies_is_decoded_by_content(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGBA", (12, 12), (0, 255, 0, 255)).save(path, format="PNG")
    np.testing.assert_allclose(data.load_image(path, 6), np.broadcast_to([0, 1, 0], (6, 6, 3)))


def test_large_jpeg_uses_reduced_decoding_but_keeps_the_picture(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1600, 0:2000]
    picture = (127 + 100 * np.sin(x / 150) * np.cos(y / 110) + rng.normal(0, 5, x.shape)).clip(0, 255)
    path = _save(Image.fromarray(picture.astype(np.uint8), "L"), tmp_path / "xray.jpeg", quality=90)
    fast = data.load_image(path, 224)
    with Image.open(path) as im:  # reference: full-resolution decode, then the same resize
        reference = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), np.float32) / 255
    assert fast.shape == (224, 224, 3)
    assert np.abs(fast - reference).mean() < 0.01


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty file"),
    ("truncated", "truncated"),
    ("text", "not an image"),
    ("missing", "file not found"),
])
def test_bad_files_raise_bad_image_error(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        path.touch()
    elif kind == "truncated":
        good = tmp_path / "good.jpg"
        noisy = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(noisy).save(good, quality=90)
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("this is not a picture\n")
    with pytest.raises(data.BadImageError, match=reason) as info:
        data.load_image(path, 32)
    assert info.value.path == path and reason in info.value.reason


@needs_flowers
def test_real_flower_and_xray_files_decode():
    flower = data.list_images(data.find_dataset("flowers"))["roses"][0]
    xray = data.list_images(data.find_dataset("chest_xray") / "test")["NORMAL"][0]
    for path in (flower, xray):
        pixels = data.load_image(path, 224)
        assert pixels.shape == (224, 224, 3) and 0 <= pixels.min() < pixels.max() <= 1


# ----------------------------------------------------------------------------- the central crop
def test_crop_box_is_the_centred_window_of_the_output_shape():
    assert data.crop_box(320, 240, 224) == (0.0, 0.0, 320.0, 240.0)  # 1: the whole image
    left, top, right, bottom = data.crop_box(320, 240, 224, 0.875)  # timm: shorter side to 256, centre 224
    assert (right - left, bottom - top) == pytest.approx((210.0, 210.0))
    assert (left + right, top + bottom) == pytest.approx((320.0, 240.0))  # centred
    left, top, right, bottom = data.crop_box(100, 400, (20, 40), 0.5)  # a wide output from a tall image
    assert (right - left, bottom - top) == pytest.approx((50.0, 25.0))
    for bad in (0, -0.5, 1.01):
        with pytest.raises(ValueError, match="central_crop must be in"):
            data.crop_box(10, 10, 8, bad)


def test_central_crop_keeps_the_middle_and_drops_the_border(tmp_path):
    # A 300x200 photo: an 8-pixel red border around a blue middle.
    im = Image.new("RGB", (300, 200), RED)
    im.paste(BLUE, (8, 8, 292, 192))
    path = _save(im, tmp_path / "framed.png")
    whole = data.load_image(path, 64)  # squashed: the red border is still there
    assert whole[0, 0, 0] > 0.5 and whole[32, 32, 2] > 0.99
    centre = data.load_image(path, 64, 0.875)  # the central 175x175 (rows 12.5-187.5): all blue
    np.testing.assert_allclose(centre, np.broadcast_to(np.array(BLUE) / 255, (64, 64, 3)), atol=0.01)
    assert data.load_image(path, (32, 48), 0.875).shape == (32, 48, 3)
    # A large JPEG is decoded at a reduced scale, never below what the window needs.
    big = _save(im.resize((2400, 1600)), tmp_path / "big.jpg", quality=95)
    np.testing.assert_allclose(data.load_image(big, 64, 0.875), centre, atol=0.03)
