"""VOC-XML trees (Diverse Weather, Pascal VOC, Clipart/Watercolor/Comic) to COCO json.

The source tree is only read. For every domain and split list this writes
`<out>/annotations/<domain>_<split>.json` and then `<out>/clipgap-data.json`. Boxes follow
COCO: `[x, y, w, h]` in pixels, continuous coordinates with the origin at the top-left
corner of the image. A VOC box names its first and last pixel, 1-based and inclusive, so
it covers `[xmin - 1, xmax]` and becomes `x = xmin - 1, w = xmax - xmin + 1` (same for y).
`difficult` objects become ignored instances (`iscrowd: 1`, which MMDetection's CocoDataset
reads as `ignore_flag`). docs/data.md compares this with the reference code.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from clipgap_cli.data.classes import check_classes, parse_classes
from clipgap_cli.data.spec import IMAGE_SUFFIXES, SPEC_NAME, DataSpec, Domain, Split, load_spec, write_spec
from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import atomic_write

DWD_CLASSES = ("bus", "bike", "car", "motor", "person", "rider", "truck")
DWD_DOMAINS = ("daytime_clear", "night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy")
ART_CLASSES = ("bicycle", "bird", "car", "cat", "dog", "person")
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
CLASS_SETS = {"dwd": DWD_CLASSES, "voc-art": ART_CLASSES, "voc": VOC_CLASSES}

SPLIT_LISTS = ("train", "val", "trainval", "test")
_YEAR_DIR = re.compile(r"^VOC20\d\d$")

# Which split each kind of domain trains on and is scored on, in order of preference.
# Diverse Weather targets are scored on their train lists (the published protocol; the
# rainy domains ship no test list); Clipart/Watercolor/Comic on their test lists, as the
# reference does; the source always on a held-out list, never on what it trains on.
_TRAIN_PREFERENCE = {"dwd": ("train", "trainval"), "voc": ("trainval", "train"), "art": ("train", "trainval")}
_SOURCE_EVAL_PREFERENCE = ("test", "val")
_TARGET_EVAL_PREFERENCE = {
    "dwd": ("train", "trainval", "test", "val"),
    "voc": ("test", "val", "trainval", "train"),
    "art": ("test", "val", "train", "trainval"),
}

# Reasons an object or an image is left out or changed, as the report names them.
UNKNOWN_CLASS = "class not in the class list"
MALFORMED_BOX = "malformed bndbox"
DEGENERATE_BOX = "degenerate box (max < min)"
OUTSIDE_BOX = "box outside the image"
CLIPPED_BOX = "box clipped to the image (kept)"
MISSING_IMAGE = "missing image file"
UNREADABLE_IMAGE = "unreadable image file"
MISSING_XML = "missing annotation file"
MALFORMED_XML = "malformed annotation XML"
DUPLICATE_ID = "id listed twice in the split list"
SIZE_MISMATCH = "XML size differs from the image (used the image's)"


@dataclass(frozen=True)
class VocDomain:
    """A domain found in the tree: one VOC directory, or several years merged (Pascal VOC).

    `kind` is "dwd", "voc" or "art" and decides the class set and the protocol splits.
    """

    name: str
    kind: str
    voc_dirs: tuple[Path, ...]


@dataclass
class SplitSummary:
    domain: str
    split: str
    images: int = 0
    objects: int = 0
    ignored: int = 0
    empty_images: int = 0


@dataclass
class Issue:
    """How often one reason occurred, and its first occurrence (a file, an id, a name)."""

    unit: str
    reason: str
    count: int = 0
    example: str = ""


class Issues(dict[str, Issue]):
    """Reason -> Issue, in the order the reasons first occurred; examples name files
    relative to the root of the tree."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def add(self, unit: str, reason: str, path: Path, detail: str = "") -> None:
        example = path.relative_to(self.root).as_posix() + (f": {detail}" if detail else "")
        self.setdefault(reason, Issue(unit, reason, example=example)).count += 1


@dataclass(frozen=True)
class ConvertReport:
    spec: DataSpec
    class_set: str
    splits: list[SplitSummary]
    issues: Issues


Progress = Callable[[int, int], None]
"""Called as `progress(images_done, images_total)` while converting."""


def convert_voc(
    root: Path | str,
    out: Path | str,
    *,
    classes: str | Sequence[str] | None = None,
    source: str | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert every domain and split list under `root` to COCO json in `out`, plus the spec.

    `classes`: a class-set name (`dwd`, `voc-art`, `voc`) or a list of names; by default
    `dwd` for the Diverse Weather layout, `voc-art` when Watercolor or Comic is present,
    else `voc`. `source`: the source domain; by default `daytime_clear` or `voc` if
    present, or the only domain. Raises ClipgapError when the tree is unusable; objects and
    images it cannot use are left out and counted in the report.
    """
    root, out = Path(root).resolve(), Path(out).resolve()
    domains = discover(root)
    _check_out(root, out)
    class_set, class_names = _choose_classes(classes, domains)
    source = _choose_source(source, domains)
    domains.sort(key=lambda d: d.name != source)  # the source first, the others in order
    lists = {d.name: _split_lists(d) for d in domains}
    protocol = {d.name: _protocol(d, d.name == source, list(lists[d.name])) for d in domains}
    total = sum(len(ids) for splits in lists.values() for ids in splits.values())

    issues, summaries, done, spec_domains = Issues(root), [], 0, []
    for domain in domains:
        splits = {}
        for split, ids in lists[domain.name].items():
            coco, summary, image_dir = _convert_split(domain, split, ids, class_names, issues)
            ann_file = out / "annotations" / f"{domain.name}_{split}.json"
            text = json.dumps(coco, separators=(",", ":")) + "\n"
            atomic_write(ann_file, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
            splits[split] = Split(split, image_dir, ann_file)
            summaries.append(summary)
            done += len(ids)
            if progress:
                progress(done, total)
        role = "source" if domain.name == source else "target"
        eval_split, train_split = protocol[domain.name]
        spec_domains.append(Domain(domain.name, role, splits, eval_split, train_split))

    write_spec(DataSpec(path=out / SPEC_NAME, classes=class_names, domains=tuple(spec_domains)))
    # Hand back what later stages will read: the spec as loaded and validated.
    return ConvertReport(load_spec(out / SPEC_NAME), class_set, summaries, issues)


def discover(root: Path) -> list[VocDomain]:
    """The domains under `root`, Pascal VOC years merged into `voc`.

    Recognised: `root` itself a VOC directory (Annotations/, JPEGImages/, ImageSets/Main/),
    or one Diverse Weather domain (`daytime_clear/VOC2007`, ...); `root/VOC20xx` or
    `root/VOCdevkit/VOC20xx` (Pascal VOC, domain `voc`); `root/<domain>/VOC20xx` (Diverse
    Weather); `root/<domain>/Annotations` (Clipart1k, Watercolor2k, Comic2k).
    """
    if not root.is_dir():
        raise ClipgapError(f"{root} is not a directory; pass the root of a VOC-style dataset")
    if _is_voc_like(root):
        return [VocDomain(_domain_name(root.name), "art", (_checked(root),))]
    if root.name in DWD_DOMAINS and _years(root):  # one Diverse Weather domain on its own
        return [VocDomain(root.name, "dwd", tuple(map(_checked, _years(root))))]
    domains = []
    devkit = root / "VOCdevkit"
    years = _years(root) or (_years(devkit) if devkit.is_dir() else [])
    if years:
        domains.append(VocDomain("voc", "voc", tuple(_checked(y) for y in years)))
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name == "VOCdevkit" or _YEAR_DIR.match(sub.name):
            continue
        if _is_voc_like(sub):
            domains.append(VocDomain(_domain_name(sub.name), "art", (_checked(sub),)))
        elif _years(sub):
            domains.append(VocDomain(_domain_name(sub.name), "dwd", tuple(map(_checked, _years(sub)))))
    if not domains:
        raise ClipgapError(
            f"found no VOC-style dataset under {root}: expected <root>/<domain>/VOC2007/Annotations "
            "(Diverse Weather), <root>/VOCdevkit/VOC2007 (Pascal VOC) or <root>/<name>/Annotations "
            "(Clipart1k, Watercolor2k, Comic2k)"
        )
    # The paper's order for the Diverse Weather domains, then the others by name.
    domains.sort(
        key=lambda d: (DWD_DOMAINS.index(d.name) if d.name in DWD_DOMAINS else len(DWD_DOMAINS), d.name)
    )
    names = [d.name for d in domains]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash:
        raise ClipgapError(
            f"{root} holds two datasets that both map to domain {clash!r}; convert them separately"
        )
    return domains


def _is_voc_like(path: Path) -> bool:
    return any((path / part).is_dir() for part in ("Annotations", "JPEGImages", "ImageSets"))


def _years(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _YEAR_DIR.match(p.name) and _is_voc_like(p))


def _checked(voc_dir: Path) -> Path:
    for part in ("Annotations", "JPEGImages", "ImageSets/Main"):
        if not (voc_dir / part).is_dir():
            raise ClipgapError(
                f"{voc_dir} has no {part} directory; a VOC dataset needs Annotations/, "
                "JPEGImages/ and ImageSets/Main/"
            )
    return voc_dir


def _domain_name(dir_name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "_", dir_name.lower()).strip("_.-") or "domain"


def _check_out(root: Path, out: Path) -> None:
    if out == root or out.is_relative_to(root):
        raise ClipgapError(
            f"--out {out} is inside the source tree {root}; choose a directory outside it "
            "(clipgap never writes into the source tree)"
        )
    if out.exists() and not out.is_dir():
        raise ClipgapError(f"--out {out} is a file; choose a directory")


def _choose_classes(
    classes: str | Sequence[str] | None, domains: list[VocDomain]
) -> tuple[str, tuple[str, ...]]:
    if classes is None:
        names = {d.name for d in domains}
        if any(d.kind == "dwd" for d in domains):
            classes = "dwd"
        elif names & {"watercolor", "comic"}:
            classes = "voc-art"
        else:
            classes = "voc"
    if isinstance(classes, str) and classes in CLASS_SETS:
        return classes, CLASS_SETS[classes]
    text = classes if isinstance(classes, str) else ",".join(classes)
    try:
        chosen = tuple(parse_classes(text))
        # VOC XML names are matched without case, so names must differ in more than case.
        check_classes([c.lower() for c in chosen], "--classes, without case,")
    except ClipgapError as err:
        sets = ", ".join(CLASS_SETS)
        raise ClipgapError(f"--classes {text!r} is not a class set ({sets}): {err}") from None
    return "custom", chosen


def _choose_source(source: str | None, domains: list[VocDomain]) -> str:
    names = [d.name for d in domains]
    if source is None:
        defaults = [n for n in ("daytime_clear", "voc") if n in names]
        if defaults:
            return defaults[0]
        if len(names) == 1:
            return names[0]
        raise ClipgapError(
            f"cannot tell which domain is the source; pass --source (one of: {', '.join(names)})"
        )
    if source not in names:
        raise ClipgapError(f"--source {source!r} is not a domain of this tree (found: {', '.join(names)})")
    return source


def _split_lists(domain: VocDomain) -> dict[str, list[tuple[Path, str]]]:
    """Split name -> (VOC dir, image id) in list order; the same list of several years merged."""
    splits: dict[str, list[tuple[Path, str]]] = {}
    for voc_dir in domain.voc_dirs:
        for split in SPLIT_LISTS:
            list_file = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
            if not list_file.is_file():
                continue
            try:
                lines = list_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise ClipgapError(f"cannot read split list {list_file}: {err}") from None
            ids = [line.split()[0] for line in lines if line.strip()]
            splits.setdefault(split, []).extend((voc_dir, i) for i in ids)
    if not splits:
        raise ClipgapError(
            f"{domain.voc_dirs[0]} has no split list ({', '.join(SPLIT_LISTS)}.txt) in "
            "ImageSets/Main; add one listing the image ids"
        )
    return splits


def _protocol(domain: VocDomain, is_source: bool, splits: list[str]) -> tuple[str, str | None]:
    """(eval split, train split) of a domain, the train split only for the source."""
    if not is_source:
        # Every split list is in each preference, so one always matches.
        return next(s for s in _TARGET_EVAL_PREFERENCE[domain.kind] if s in splits), None
    train_split = next((s for s in _TRAIN_PREFERENCE[domain.kind] if s in splits), None)
    eval_split = next((s for s in _SOURCE_EVAL_PREFERENCE if s in splits), None)
    if train_split is None or eval_split is None:
        missing = "a train or trainval list" if train_split is None else "a test or val list"
        raise ClipgapError(
            f"the source domain {domain.name!r} needs {missing} in ImageSets/Main "
            f"(found: {', '.join(splits)}); add it, or pick another domain with --source"
        )
    return eval_split, train_split


def _convert_split(
    domain: VocDomain,
    split: str,
    ids: list[tuple[Path, str]],
    classes: tuple[str, ...],
    issues: Issues,
) -> tuple[dict, SplitSummary, Path]:
    """One split to a COCO dict; returns it, its summary and the image directory it uses.

    A domain of one VOC directory uses its JPEGImages/ with bare file names; merged years
    use their parent directory with file names like `VOC2007/JPEGImages/000005.jpg`.
    """
    merged = len(domain.voc_dirs) > 1
    image_dir = domain.voc_dirs[0].parent if merged else domain.voc_dirs[0] / "JPEGImages"
    category = {name: i + 1 for i, name in enumerate(classes)}
    category_of = {name.lower(): i for name, i in category.items()}  # XML object names are lowercased
    listings = {voc_dir: set(os.listdir(voc_dir / "JPEGImages")) for voc_dir in domain.voc_dirs}
    summary = SplitSummary(domain.name, split)
    images, annotations, seen = [], [], set()
    for voc_dir, image_id in ids:
        if (voc_dir, image_id) in seen:
            issues.add("image", DUPLICATE_ID, voc_dir / "ImageSets" / "Main" / f"{split}.txt", image_id)
            continue
        seen.add((voc_dir, image_id))
        parsed = _read_image(voc_dir, image_id, listings[voc_dir], issues)
        if parsed is None:
            continue
        file_name, width, height, objects = parsed
        if merged:
            file_name = f"{voc_dir.name}/JPEGImages/{file_name}"
        images.append({"id": len(images) + 1, "file_name": file_name, "width": width, "height": height})
        kept = 0
        xml_file = voc_dir / "Annotations" / f"{image_id}.xml"
        for name, difficult, box in objects:
            bbox = _coco_box(name, box, width, height, category_of, xml_file, issues)
            if bbox is None:
                continue
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": len(images),
                "category_id": category_of[name],
                "bbox": bbox,
                "area": _number(bbox[2] * bbox[3]),
                "iscrowd": int(difficult),
            })  # fmt: skip
            kept += 1
            summary.ignored += int(difficult)
        summary.objects += kept
        summary.empty_images += kept == 0
    summary.images = len(images)
    categories = [{"id": i, "name": name} for name, i in category.items()]
    return {"images": images, "annotations": annotations, "categories": categories}, summary, image_dir


def _read_image(voc_dir: Path, image_id: str, listing: set[str], issues: Issues):
    """(file name, width, height, [(class, difficult, (xmin, ymin, xmax, ymax) strings)]) or None."""
    xml_file = voc_dir / "Annotations" / f"{image_id}.xml"
    try:
        tree = ET.parse(xml_file)
    except FileNotFoundError:
        issues.add("image", MISSING_XML, xml_file)
        return None
    except (ET.ParseError, OSError) as err:
        issues.add("image", MALFORMED_XML, xml_file, str(err))
        return None
    ann = tree.getroot()
    suffixes = [s for suffix in IMAGE_SUFFIXES for s in (suffix, suffix.upper())]
    candidates = [image_id + suffix for suffix in suffixes] + [(ann.findtext("filename") or "").strip()]
    file_name = next((c for c in candidates if c in listing), None)
    if file_name is None:
        issues.add("image", MISSING_IMAGE, voc_dir / "JPEGImages" / f"{image_id}.jpg")
        return None
    try:
        with Image.open(voc_dir / "JPEGImages" / file_name) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as err:
        issues.add("image", UNREADABLE_IMAGE, voc_dir / "JPEGImages" / file_name, str(err))
        return None
    size = (ann.findtext("size/width"), ann.findtext("size/height"))
    if size != (None, None) and _parse_size(size) != (width, height):
        issues.add("image", SIZE_MISMATCH, xml_file, f"{size[0]}x{size[1]} vs {width}x{height}")
    objects = []
    for obj in ann.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        box = tuple(obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name, difficult, box))
    return file_name, width, height, objects


def _parse_size(size: tuple[str | None, str | None]) -> tuple[float, float] | None:
    try:
        return float(size[0]), float(size[1])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _coco_box(name, box, width, height, classes, xml_file, issues) -> list[float] | None:
    """The COCO `[x, y, w, h]` of a VOC box clipped to the image, or None if it is unusable
    (`classes`: the lowercased class names)."""
    if name not in classes:
        issues.add("object", UNKNOWN_CLASS, xml_file, repr(name))
        return None
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in box)
    except (TypeError, ValueError):
        issues.add("object", MALFORMED_BOX, xml_file, f"{name} {box}")
        return None
    where = f"{name} {xmin:g},{ymin:g},{xmax:g},{ymax:g}"
    if xmax < xmin or ymax < ymin:
        issues.add("object", DEGENERATE_BOX, xml_file, where)
        return None
    x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 <= cx1 or cy2 <= cy1:
        issues.add("object", OUTSIDE_BOX, xml_file, where)
        return None
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        issues.add("object", CLIPPED_BOX, xml_file, where)
    return [_number(cx1), _number(cy1), _number(cx2 - cx1), _number(cy2 - cy1)]


def _number(value: float) -> int | float:
    """Integral values as ints, so that pixel boxes read as pixels in the json."""
    return int(value) if float(value).is_integer() else round(value, 3)
