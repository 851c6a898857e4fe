"""Find, download, list and split image folders; decode images robustly.

The course reads images the way TensorFlow's ``retrain.py`` did: one folder per
class, and a split into training / validation / testing decided by a hash of
each file's name, so that a file keeps its split when other files are added.

- ``find_dataset("flowers")`` returns the folder of a dataset (local copies
  first, then a one-time download into the cache).
- ``make_splits(folder)`` lists the class folders and splits them.
- ``load_image(path, 224)`` decodes any common image file into a float array.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from helpers.settings import PROJECT_ROOT, cache_dir

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "BadImageError",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DownloadError",
    "ImageSplits",
    "dataset_roots",
    "download_dataset",
    "find_dataset",
    "list_images",
    "check_central_crop",
    "crop_box",
    "load_image",
    "make_splits",
    "patient_id",
    "split_files",
    "split_key",
    "verify_dataset",
    "which_split",
]

#: Environment variable naming a folder that holds the datasets (checked first).
DATA_ENV = "COURSE_DATA_DIR"
#: The read-only copies shipped beside the project (``../shared/datasets``).
SHARED_DATASETS_DIR = PROJECT_ROOT.parent / "shared" / "datasets"
#: File name endings counted as images (compared in lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
#: The three splits, in the order they are reported.
SPLITS = ("training", "validation", "testing")
#: retrain.py's MAX_NUM_IMAGES_PER_CLASS: the hash is taken modulo this + 1.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
#: Seconds to wait before download attempt n+1 is ``RETRY_WAIT_SECONDS * n``.
RETRY_WAIT_SECONDS = 2.0
#: Prefix of the temporary folders an archive is unpacked into (inside the cache).
PARTIAL_PREFIX = ".partial-"


# --------------------------------------------------------------------------- errors
class DatasetError(Exception):
    """A dataset problem explained in plain words (IPython shows the message only).

    Command-line tools print ``str(error)`` and exit with status ``exit_code`` (2).
    """

    exit_code = 2

    def _render_traceback_(self) -> list[str]:
        # IPython/Jupyter call this instead of printing a traceback.
        lines = str(self).splitlines() or [""]
        return [f"{type(self).__name__}: {lines[0]}", *lines[1:]]


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset is neither on disk nor downloadable right now."""

    def __str__(self) -> str:  # FileNotFoundError would print "(None) ..." otherwise
        return self.args[0] if self.args else ""


class DownloadError(DatasetError):
    """A download or its unpacking/verification failed; nothing half-done is left behind."""


class BadImageError(ValueError):
    """A file that cannot be decoded as an image: ``path`` and a short ``reason``."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset comes from and what a complete copy contains.

    ``folder`` is the dataset's folder name on disk; ``archive_subdir`` the folder
    inside the archive that becomes it; ``expected_counts`` maps a class folder
    (relative to the dataset folder) to its number of images, checked within
    ``tolerance`` (a fraction) after a download.
    """

    name: str
    folder: str
    url: str | None
    known_hash: str | None
    archive_subdir: str | None
    classes: tuple[str, ...]
    expected_counts: dict[str, int] = field(default_factory=dict)
    how_to_get: str = ""
    tolerance: float = 0.02


DATASETS: dict[str, DatasetInfo] = {
    "flowers": DatasetInfo(
        name="flowers",
        folder="flower_photos",
        url="https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
        known_hash=None,  # no checksum is published: verified by the class counts instead
        archive_subdir="flower_photos",
        classes=("daisy", "dandelion", "roses", "sunflowers", "tulips"),
        expected_counts={"daisy": 633, "dandelion": 898, "roses": 641, "sunflowers": 699, "tulips": 799},
        how_to_get="TensorFlow's example images: flower_photos.tgz (218 MB, 3,670 JPEGs in 5 class folders),\n"
        "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
    ),
    "chest_xray": DatasetInfo(
        name="chest_xray",
        folder="chest_xray",
        url="https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
        "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded",
        known_hash=None,  # Mendeley publishes no checksum: verified by the class counts instead
        archive_subdir="chest_xray",
        classes=("NORMAL", "PNEUMONIA"),
        expected_counts={"train/NORMAL": 1349, "train/PNEUMONIA": 3883,
                         "test/NORMAL": 234, "test/PNEUMONIA": 390},
        how_to_get="Kermany et al. (2018) chest X-rays, Mendeley Data rscbjbr9sj, ChestXRay2017.zip (1.2 GB),\n"
        "https://data.mendeley.com/datasets/rscbjbr9sj ; or Kaggle paultimothymooney/chest-xray-pneumonia\n"
        "(unzip it so that chest_xray/train, chest_xray/test (and val) are the folders; val/ is merged into train/).",
    ),
    "daffodils": DatasetInfo(
        name="daffodils",
        folder="daffodils",
        url=None,
        known_hash=None,
        archive_subdir=None,
        classes=("daffodils",),
        expected_counts={},
        how_to_get="There is no public archive of this folder: it holds the 'Daffodil' photos (class 42) of the\n"
        "Oxford 102 Category Flowers test split, https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ ;\n"
        "any folder of flower photos that are not daisies, dandelions, roses, sunflowers or tulips will do.",
    ),
}


def _info_for(name: str) -> DatasetInfo | None:
    """The registry entry for a dataset name or folder name (``flower_photos`` works too)."""
    if name in DATASETS:
        return DATASETS[name]
    return next((info for info in DATASETS.values() if info.folder == name), None)


# --------------------------------------------------------------------------- finding
def dataset_roots() -> list[Path]:
    """The folders searched for datasets, in order: ``$COURSE_DATA_DIR``, ``../shared/datasets``, the cache."""
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    roots.append(Path(SHARED_DATASETS_DIR))
    roots.append(cache_dir("datasets"))
    return roots


def _has_images(folder: Path, depth: int = 3) -> bool:
    """True when ``folder`` holds an image file at most ``depth`` levels down."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
            return True
    return depth > 0 and any(
        _has_images(Path(e.path), depth - 1) for e in entries if e.is_dir() and not e.name.startswith(".")
    )


def _not_found_message(name: str, info: DatasetInfo | None, reason: str = "") -> str:
    folder = info.folder if info else name
    searched = "\n".join(f"  - {root / folder}" for root in dataset_roots())
    lines = [f"dataset '{name}' was not found." + (f" {reason}" if reason else "")]
    if info and info.how_to_get:
        lines += ["Where to get it:", *("  " + line for line in info.how_to_get.splitlines())]
    lines += [f"Where to put it: a folder named '{folder}' in one of these places (searched in this order):",
              searched,
              f"or set {DATA_ENV} to the folder that holds '{folder}'."]
    return "\n".join(lines)


def find_dataset(name_or_path, download: bool = True) -> Path:
    """Return the folder of a dataset, downloading it once into the cache if needed.

    ``name_or_path`` is a registered name (``"flowers"``, ``"chest_xray"``,
    ``"daffodils"``; see ``DATASETS``) or a folder. A name is looked up, in order,
    in ``$COURSE_DATA_DIR/<folder>``, ``PROJECT_ROOT/../shared/datasets/<folder>``
    and ``cache_dir("datasets")/<folder>``; if none holds images and the dataset
    has a URL (and ``download`` is true) it is downloaded with ``download_dataset``.
    Raises ``DatasetNotFoundError`` saying where to get the data and where to put it.
    """
    text = os.fspath(name_or_path)
    info = _info_for(text)
    if info is None:
        path = Path(text).expanduser()
        if path.is_dir():
            return path
        if isinstance(name_or_path, Path) or os.sep in text or "/" in text:
            raise DatasetNotFoundError(f"folder '{path}' does not exist.")
    folder = info.folder if info else text
    for root in dataset_roots():
        candidate = root / folder
        if candidate.is_dir() and _has_images(candidate):
            return _adopt_kaggle_layout(candidate) if folder == "chest_xray" else candidate
    if info is None:
        raise DatasetNotFoundError(_not_found_message(text, None, "It is not a registered dataset "
                                                      f"({', '.join(DATASETS)}) nor an existing folder."))
    if not info.url:
        raise DatasetNotFoundError(_not_found_message(text, info, "It has no download of its own."))
    if not download:
        raise DatasetNotFoundError(_not_found_message(text, info, "Downloading was not allowed (download=False)."))
    try:
        return download_dataset(info.name)
    except DownloadError as err:
        raise DatasetNotFoundError(_not_found_message(text, info, f"The download failed: {err}")) from err


def _adopt_kaggle_layout(path: Path) -> Path:
    """Accept chest X-rays unzipped from Kaggle by hand.

    Kaggle's archive nests the data once more (``chest_xray/chest_xray/train``) and
    has a 16-image ``val/`` folder. The nested folder is used as is; the images of
    ``val/<class>`` are moved into ``train/<class>`` (once, where the folder is
    writable) so that the course sees Mendeley's two-split layout, train + test.
    """
    if not (path / "train").is_dir() and (path / "chest_xray" / "train").is_dir():
        path = path / "chest_xray"
    val = path / "val"
    if val.is_dir() and (path / "train").is_dir() and os.access(val, os.W_OK):
        for class_dir in (d for d in val.iterdir() if d.is_dir() and not d.name.startswith(".")):
            target = path / "train" / class_dir.name
            target.mkdir(exist_ok=True)
            for image in class_dir.iterdir():
                if not (target / image.name).exists():
                    os.replace(image, target / image.name)
            _remove_if_empty(class_dir)
        _remove_if_empty(val)  # a file whose name is taken in train/ stays in val/
    return path


def _remove_if_empty(folder: Path) -> None:
    for junk in folder.glob(".DS_Store"):
        junk.unlink()
    try:
        folder.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------- downloading
def verify_dataset(folder, info: DatasetInfo) -> dict[str, int]:
    """Count the images of each expected class folder; raise ``DownloadError`` when one is off.

    A count passes when it is within ``info.tolerance`` (a fraction, 2 % by default)
    of ``info.expected_counts``. Returns the counts.
    """
    folder = Path(folder)
    counts, problems = {}, []
    for rel, expected in info.expected_counts.items():
        class_dir = folder / rel
        n = sum(1 for p in class_dir.iterdir() if _is_image_file(p)) if class_dir.is_dir() else 0
        counts[rel] = n
        if abs(n - expected) > info.tolerance * expected:
            problems.append(f"{rel}: {n} images, expected {expected}")
    if problems:
        raise DownloadError(f"'{info.name}' does not look complete ({'; '.join(problems)}; "
                            f"tolerance {info.tolerance:.0%}).")
    return counts


def download_dataset(name: str, dest=None, url: str | None = None, known_hash: str | None = None,
                     progress: bool = True, retries: int = 2) -> Path:
    """Download, verify and unpack a registered dataset; return its folder.

    One path for every dataset, built on pooch: ``pooch.retrieve`` streams the
    archive into a temporary file and moves it into place only when complete (and
    when its checksum matches ``known_hash``, if one is known); a dropped connection
    is retried ``retries`` times. The archive is unpacked into a temporary folder
    inside ``dest`` (default ``cache_dir("datasets")``), checked against the expected
    class folders and image counts, then moved into place with ``os.replace``, so a
    half-unpacked folder is never mistaken for data. The archive is deleted afterwards.
    A complete copy already in ``dest`` is returned without downloading anything.
    """
    import pooch

    info = _info_for(name)
    if info is None:
        raise DatasetNotFoundError(f"'{name}' is not a registered dataset ({', '.join(DATASETS)}).")
    url = url or info.url
    if not url:
        raise DatasetNotFoundError(_not_found_message(name, info, "It has no download of its own."))
    known_hash = known_hash or info.known_hash
    dest = Path(dest) if dest is not None else cache_dir("datasets")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / info.folder
    if target.is_dir():
        try:
            verify_dataset(target, info)
            return target
        except DownloadError:
            pass  # incomplete or foreign: download again and replace it
    _remove_partials(dest, info.folder)

    archive = _fetch(pooch, url, known_hash, dest / "downloads", f"{info.folder}.archive", progress, retries)
    partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{info.folder}-", dir=dest))
    try:
        _unpack(archive, partial)
        inner = _locate_inner(partial, info)
        verify_dataset(inner, info)
        if target.exists():
            old = partial / ".replaced"
            os.replace(target, old)
        os.replace(inner, target)
    except DownloadError:
        archive.unlink(missing_ok=True)  # a retry must download it again
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return target


def _fetch(pooch, url, known_hash, folder: Path, fname: str, progress: bool, retries: int) -> Path:
    """``pooch.retrieve`` with a bounded retry on connection errors and plain-words errors."""
    import requests

    logger = pooch.get_logger()
    for attempt in range(retries + 1):
        if progress:
            print(f"Downloading {url}" + (f" (attempt {attempt + 1})" if attempt else ""))
        level = logger.level
        logger.setLevel("WARNING")  # pooch's own hints ("use this hash ...") are not for learners
        try:
            downloader = pooch.HTTPDownloader(progressbar=progress, timeout=60)
            return Path(pooch.retrieve(url, known_hash=known_hash, fname=fname, path=folder,
                                       downloader=downloader))
        except requests.RequestException as err:
            if attempt == retries:
                raise DownloadError(f"could not download {url} after {retries + 1} attempts "
                                    f"({type(err).__name__}: {_short(err)}). Check the internet "
                                    "connection, or download it by hand.") from err
            time.sleep(RETRY_WAIT_SECONDS * (attempt + 1))
        except ValueError as err:  # pooch: checksum mismatch (the bad file is already deleted)
            raise DownloadError(f"the file downloaded from {url} is not the expected one: {_short(err)}") from err
        finally:
            logger.setLevel(level)


def _short(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _remove_partials(dest: Path, folder: str) -> None:
    """Delete what an interrupted run left: unpacking folders of ``folder``, pooch's temporary files."""
    for stale in dest.glob(f"{PARTIAL_PREFIX}{folder}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in (dest / "downloads").glob("tmp*"):
        stale.unlink(missing_ok=True)


def _unpack(archive: Path, into: Path) -> None:
    """Unpack a .tgz/.tar/.zip archive (recognised by content), safely, into ``into``."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.namelist() if not m.startswith("__MACOSX")]
                zf.extractall(into, members=members)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(into, filter="data")
        else:
            raise DownloadError(f"{archive.name} is not a zip or tar archive (a web page instead of the data?).")
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as err:
        raise DownloadError(f"the archive is damaged or incomplete ({type(err).__name__}: {_short(err)}).") from err


def _locate_inner(unpacked: Path, info: DatasetInfo) -> Path:
    """The folder inside an unpacked archive that holds the class folders (at most two levels down)."""
    candidates = [unpacked / info.archive_subdir] if info.archive_subdir else []
    level = [unpacked]
    for _ in range(3):
        candidates += level
        level = [d for folder in level for d in sorted(folder.iterdir())
                 if d.is_dir() and not d.name.startswith((".", "__MACOSX"))]
    for candidate in candidates:
        if candidate.is_dir() and all((candidate / rel).is_dir() for rel in info.expected_counts):
            return candidate
    raise DownloadError(f"the archive does not contain the expected folders "
                        f"({', '.join(info.expected_counts) or info.folder}).")


# --------------------------------------------------------------------------- listing and splitting
def _is_image_file(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(image_dir) -> dict[str, list[Path]]:
    """Map each class folder name to its sorted image paths (classes sorted by name).

    Hidden files and non-image extensions are ignored, and class folders without
    images are left out. A folder with no class subfolders but images directly
    inside is one class named after the folder (``daffodils/``).
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DatasetNotFoundError(f"folder '{image_dir}' does not exist.")
    subdirs = sorted(d for d in image_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = {d.name: sorted(p for p in d.iterdir() if _is_image_file(p)) for d in subdirs}
    classes = {name: paths for name, paths in classes.items() if paths}
    if not classes:
        loose = sorted(p for p in image_dir.iterdir() if _is_image_file(p))
        if loose:
            return {image_dir.name: loose}
        hint = f" Its subfolders are {', '.join(d.name for d in subdirs)}: pick one of them?" if subdirs else ""
        raise DatasetError(f"no images found in '{image_dir}' (expected one subfolder of images per class).{hint}")
    return classes


def split_key(path) -> str:
    """The name a file is hashed by: its base name with anything from ``_nohash_`` on removed.

    ``retrain.py`` hashed the whole path, so its split changed when the folder moved;
    hashing the base name keeps each file's split wherever the folder lives.
    """
    return re.sub(r"_nohash_.*$", "", Path(path).name)


def which_split(key: str, validation_percentage: float = 10, testing_percentage: float = 10) -> str:
    """``"training"``, ``"validation"`` or ``"testing"`` for a key, by retrain.py's rule.

    ``h = int(sha1(key))``; ``percentage = (h mod 2**27) * 100 / (2**27 - 1)``; below
    ``validation_percentage`` is validation, below ``validation + testing`` is
    testing, the rest training. The answer depends on the key alone, so adding
    files never moves an existing file to another split. (``retrain.py`` hashed the
    file's whole path; ``split_key`` hands this function the base name instead.)
    """
    h = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)
    percentage = (h % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def _check_percentages(validation_percentage: float, testing_percentage: float) -> None:
    if not (0 <= validation_percentage and 0 <= testing_percentage
            and validation_percentage + testing_percentage <= 100):
        raise ValueError(f"validation_percentage ({validation_percentage}) and testing_percentage "
                         f"({testing_percentage}) must be >= 0 and add up to at most 100.")


def split_files(paths, key=split_key, validation_percentage: float = 10,
                testing_percentage: float = 10) -> dict[str, list[Path]]:
    """Split paths into training/validation/testing by hashing ``key(path)``.

    The key function decides what must stay together: ``split_key`` (the base
    name) keeps a file and its ``_nohash_`` variants together; ``patient_id`` keeps
    all images of one patient in one split. Input order is kept within each split.
    """
    _check_percentages(validation_percentage, testing_percentage)
    splits: dict[str, list[Path]] = {name: [] for name in SPLITS}
    for path in paths:
        splits[which_split(key(path), validation_percentage, testing_percentage)].append(Path(path))
    return splits


_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),                   # person1234_bacteria_5.jpeg, person447_virus_921_1.jpeg
    re.compile(r"^((?:NORMAL\d+-)?IM-\d+)-"),       # IM-0115-0001.jpeg, NORMAL2-IM-0123-0001.jpeg
)


def patient_id(path) -> str:
    """The patient a chest X-ray belongs to, read from its file name.

    ``person123_bacteria_4.jpeg`` -> ``person123``; ``IM-0115-0001.jpeg`` and
    ``IM-0011-0001-0002.jpeg`` -> ``IM-0115`` / ``IM-0011``;
    ``NORMAL2-IM-0123-0001.jpeg`` -> ``NORMAL2-IM-0123`` (a separate numbering).
    ``personN`` is shared by that person's bacterial and viral images. A name that
    matches neither pattern is its own group (its ``split_key``).
    """
    name = Path(path).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return split_key(path)


@dataclass
class ImageSplits:
    """Image paths and integer labels for each split; ``classes[label]`` is the class name."""

    classes: list[str]
    files: dict[str, list[Path]]
    labels: dict[str, np.ndarray]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{class: {split: number of images}}``."""
        return {
            name: {split: int(np.sum(self.labels[split] == index)) for split in self.files}
            for index, name in enumerate(self.classes)
        }

    def subset(self, max_per_class, seed: int = 42) -> ImageSplits:
        """At most ``max_per_class`` images of each class in each split, chosen at random.

        ``max_per_class`` is an int or a dict ``{split: int}`` (a missing split is kept
        whole). The choice depends only on ``seed``, the split and the class, and a
        larger limit keeps every image a smaller one chose. Order is preserved.
        """
        files, labels = {}, {}
        for split, paths in self.files.items():
            limit = max_per_class.get(split) if isinstance(max_per_class, dict) else max_per_class
            keep = np.ones(len(paths), dtype=bool)
            if limit is not None:
                keep[:] = False
                for index in range(len(self.classes)):
                    members = np.flatnonzero(self.labels[split] == index)
                    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
                    keep[members[rng.permutation(len(members))[:limit]]] = True
            files[split] = [p for p, k in zip(paths, keep) if k]
            labels[split] = self.labels[split][keep]
        return ImageSplits(list(self.classes), files, labels)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={len(paths)}" for split, paths in self.files.items())
        return f"ImageSplits({len(self.classes)} classes {self.classes}, {sizes})"


def make_splits(image_dir, validation_percentage: float = 10, testing_percentage: float = 10,
                test_image_dir=None, group_key=None) -> ImageSplits:
    """List the class folders of ``image_dir`` and split them into training/validation/testing.

    Without ``test_image_dir``: the hash split of ``split_files`` (by ``group_key``,
    default ``split_key``). With it (an official test set, like ``chest_xray/test``):
    testing is every image of ``test_image_dir`` (its class folders must match),
    validation is ``validation_percentage`` % of ``image_dir`` carved out by
    ``group_key`` (use ``patient_id`` for the X-rays), and the rest is training;
    ``testing_percentage`` is then ignored.
    """
    key = group_key or split_key
    images = list_images(image_dir)
    classes = list(images)
    if test_image_dir is not None:
        test_images = list_images(test_image_dir)
        if list(test_images) != classes:
            raise DatasetError(f"class folders differ: '{image_dir}' has {classes}, "
                               f"'{test_image_dir}' has {list(test_images)}.")
    files: dict[str, list[Path]] = {split: [] for split in SPLITS}
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    for index, name in enumerate(classes):
        if test_image_dir is None:
            parts = split_files(images[name], key, validation_percentage, testing_percentage)
        else:
            parts = split_files(images[name], key, validation_percentage, 0)
            parts["testing"] = list(test_images[name])
        for split in SPLITS:
            files[split] += parts[split]
            labels[split] += [index] * len(parts[split])
    return ImageSplits(classes, files, {s: np.asarray(labels[s], dtype=np.int64) for s in SPLITS})


# --------------------------------------------------------------------------- decoding
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def load_image(path, size, central_crop: float = 1.0) -> np.ndarray:
    """Decode an image file into a float32 array ``[height, width, 3]`` with values in [0, 1].

    ``size`` is an int (a square) or ``(height, width)``. With ``central_crop=1``
    (the default, retrain.py's way) the whole image is resized to that size
    without keeping its aspect ratio (squashed). With ``central_crop < 1`` only
    the centre is kept, the way ImageNet networks are evaluated (timm's
    ``crop_pct``): the largest centred window of the output's aspect ratio,
    shrunk to ``central_crop`` of its side, is resized to ``size`` -- for 0.875
    and 224 px that is "shorter side to 256, then the central 224 x 224". See
    ``crop_box``. Resampling is bilinear (antialiased when shrinking), the same
    fixed method for every file. Handled: JPEG, PNG, GIF (first frame), BMP, WebP, TIFF; greyscale,
    palette, CMYK, 16-bit (scaled by 1/65535, not clipped), transparency
    (composited on white), EXIF orientation, and extensions that lie (the content
    decides). A JPEG much larger than ``size`` is decoded at 1/2, 1/4 or 1/8 scale
    (``Image.draft``), never below ``size``: a 2000-pixel X-ray then skips most of the
    inverse-DCT and resizing work (reading its compressed data remains the cost).
    ``path`` may be a str, a Path or bytes (what ``tf.numpy_function`` passes).
    Raises ``BadImageError(path, reason)`` for missing, empty, truncated or non-image files.
    """
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    height, width = _size_hw(size)
    central_crop = check_central_crop(central_crop)
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if "exif" in im.info else 1
            rotated = orientation in (5, 6, 7, 8)
            if im.format == "JPEG":
                # Decode no smaller than the crop window needs: the window's side is
                # ``central_crop`` (at least) of the image's, so ask for size / central_crop.
                need = (math.ceil(width / central_crop), math.ceil(height / central_crop))
                im.draft(None, need[::-1] if rotated else need)
            im.load()
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            return _to_array(im, height, width, central_crop)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as err:
        raise BadImageError(path, _reason(path, err)) from None


def _reason(path, err: Exception) -> str:
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        return "cannot be read"
    if isinstance(err, UnidentifiedImageError):
        return "not an image (unrecognised content)"
    if isinstance(err, Image.DecompressionBombError):
        return "image too large"
    if "truncated" in str(err).lower():
        return "truncated image data"
    return f"corrupt image data ({_short(err, 80)})"


_RESAMPLE = Image.Resampling.BILINEAR


def check_central_crop(central_crop) -> float:
    central_crop = float(central_crop)
    if not 0.0 < central_crop <= 1.0:
        raise ValueError(f"central_crop must be in (0, 1], got {central_crop}")
    return central_crop


def crop_box(image_width: int, image_height: int, size, central_crop: float = 1.0) -> tuple[float, ...]:
    """The ``(left, top, right, bottom)`` window of an image that ``load_image`` resizes to ``size``.

    ``central_crop=1``: the whole image. Otherwise the largest centred window with
    the aspect ratio of ``size``, shrunk about its centre to ``central_crop`` of
    its side. (For a 320x240 photo, 224 px and 0.875: the central 210x210.)
    """
    height, width = _size_hw(size)
    central_crop = check_central_crop(central_crop)
    if central_crop == 1.0:
        return (0.0, 0.0, float(image_width), float(image_height))
    scale = min(image_width / width, image_height / height) * central_crop
    window_w, window_h = width * scale, height * scale
    left, top = (image_width - window_w) / 2, (image_height - window_h) / 2
    return (left, top, left + window_w, top + window_h)


def _resize(im: Image.Image, height: int, width: int, central_crop: float = 1.0) -> Image.Image:
    box = crop_box(im.width, im.height, (height, width), central_crop)
    if im.size == (width, height) and central_crop == 1.0:
        return im
    shrinking = box[2] - box[0] > width or box[3] - box[1] > height
    return im.resize((width, height), _RESAMPLE, box=box, reducing_gap=3.0 if shrinking else None)


def _to_array(im: Image.Image, height: int, width: int, central_crop: float = 1.0) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "F":
        scale = 1.0 / 65535 if im.mode != "F" else 1.0
        im = _resize(im.convert("F"), height, width, central_crop)
        grey = np.clip(np.asarray(im, dtype=np.float32) * np.float32(scale), 0.0, 1.0)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode not in ("RGB", "L"):
        im = _to_rgb(im)
    im = _resize(im, height, width, central_crop)
    array = np.asarray(im, dtype=np.float32)
    array *= np.float32(1.0 / 255.0)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return array


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for every 8-bit mode; transparent pixels are composited on white."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")
