"""The dataset spec `clipgap-data.json`: classes, domains and splits, validated on load.

A prepared dataset is a directory holding this file (docs/data.md). `optimize-augs`, `train`
and `evaluate` read a dataset only through `load_spec`, so a domain name means the same
thing in every stage. The format (docs/data.md):

    {
      "format": 1,
      "classes": ["bus", "bike", ...],
      "domains": [
        {"name": "daytime_clear", "role": "source",
         "train_split": "train", "eval_split": "test",
         "splits": {"train": {"image_dir": "...", "ann_file": "annotations/....json"},
                    "test": {...}}},
        {"name": "night_rainy", "role": "target", "eval_split": "train", "splits": {...}}
      ],
      "novel_classes": ["bike", "truck"]
    }

Paths are relative to the spec file's directory, or absolute. `ann_file` is COCO json
whose image `file_name`s are relative to `image_dir`. `train_split` (source only) and
`eval_split` are optional; the defaults follow the published protocol: the source trains
on `train` and is scored on `test`, target domains are scored on `train`. `novel_classes`
(optional) marks classes whose boxes `train` never sees (the open-vocabulary protocol):
the detector learns the others, the base classes, and `evaluate` scores every class.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import atomic_write

SPEC_NAME = "clipgap-data.json"
# The image files clipgap reads (any case): in VOC trees, and given to `predict`.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPEC_FORMAT = 1
ROLES = ("source", "target")
DEFAULT_TRAIN_SPLIT = "train"
DEFAULT_EVAL_SPLIT = {"source": "test", "target": "train"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"format", "classes", "domains", "novel_classes"}
_DOMAIN_KEYS = {"name", "role", "splits", "train_split", "eval_split"}
_SPLIT_KEYS = {"image_dir", "ann_file"}

Fail = Callable[[str], ClipgapError]
"""Makes the error for a problem in the spec being parsed: `raise fail("...")`."""


@dataclass(frozen=True)
class Split:
    """One split of a domain: a COCO json and the directory its image `file_name`s are in."""

    name: str
    image_dir: Path
    ann_file: Path


@dataclass(frozen=True)
class Domain:
    """A domain, its role and its splits by name; `train_split` is None for targets."""

    name: str
    role: str
    splits: dict[str, Split]
    eval_split: str
    train_split: str | None = None


@dataclass(frozen=True)
class DataSpec:
    """A validated dataset spec with absolute paths. Make one with `load_spec`."""

    path: Path
    classes: tuple[str, ...]
    domains: tuple[Domain, ...]
    novel_classes: tuple[str, ...] = ()  # in class order; their boxes are not trained on

    @property
    def base_classes(self) -> tuple[str, ...]:
        """The classes the detector trains on: all but the novel ones, in class order."""
        return tuple(c for c in self.classes if c not in self.novel_classes)

    @property
    def source(self) -> Domain:
        """The one source domain."""
        return next(d for d in self.domains if d.role == "source")

    @property
    def targets(self) -> tuple[Domain, ...]:
        return tuple(d for d in self.domains if d.role == "target")

    @property
    def train_split(self) -> Split:
        """The split the detector (and the semantic augmentations) train on."""
        source = self.source
        return source.splits[source.train_split]

    def domain(self, name: str) -> Domain:
        for domain in self.domains:
            if domain.name == name:
                return domain
        known = ", ".join(d.name for d in self.domains)
        raise ClipgapError(f"{self.path} has no domain {name!r}; choose one of: {known}")

    def eval_split(self, name: str) -> Split:
        """The split domain `name` is scored on."""
        domain = self.domain(name)
        return domain.splits[domain.eval_split]


def load_spec(path: Path | str) -> DataSpec:
    """Read and validate a spec: the file itself, or a directory holding `clipgap-data.json`.

    Raises ClipgapError naming the file and the problem: unreadable JSON, a missing or
    unknown key, a bad class list, no or several source domains, a split that does not
    exist, an image directory or annotation file that is not there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_NAME
    if not path.is_file():
        raise ClipgapError(
            f"no dataset spec at {path}; make one with `clipgap data convert` or "
            "`clipgap data synth`, or write it by hand as docs/data.md describes"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ClipgapError(f"cannot read dataset spec {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise ClipgapError(f"dataset spec {path} is not valid JSON ({err}); fix the file") from None
    return _parse(path.resolve(), data)


def write_spec(spec: DataSpec) -> None:
    """Write `spec` to `spec.path` atomically.

    Paths inside the spec's directory are written relative to it (so the directory can be
    moved as a whole); others stay absolute.
    """
    root = spec.path.parent.resolve()

    def rel(p: Path) -> str:
        p = p.resolve()
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)

    domains = []
    for d in spec.domains:
        entry: dict[str, Any] = {"name": d.name, "role": d.role}
        if d.train_split is not None:
            entry["train_split"] = d.train_split
        entry["eval_split"] = d.eval_split
        entry["splits"] = {
            s.name: {"image_dir": rel(s.image_dir), "ann_file": rel(s.ann_file)} for s in d.splits.values()
        }
        domains.append(entry)
    data = {"format": SPEC_FORMAT, "classes": list(spec.classes), "domains": domains}
    if spec.novel_classes:
        data["novel_classes"] = list(spec.novel_classes)
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(spec.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _parse(path: Path, data: Any) -> DataSpec:
    def fail(problem: str) -> ClipgapError:
        return ClipgapError(f"dataset spec {path}: {problem}")

    if not isinstance(data, dict):
        raise fail("the top level must be a JSON object with keys classes and domains")
    _check_keys(data, _TOP_KEYS, {"classes", "domains"}, "the top level", fail)
    if data.get("format", SPEC_FORMAT) != SPEC_FORMAT:
        raise fail(f"unknown format {data['format']!r}; this clipgap reads format {SPEC_FORMAT}")

    classes = data["classes"]
    if not isinstance(classes, list) or not classes:
        raise fail('"classes" must be a non-empty list of class names')
    if not all(isinstance(c, str) and c.strip() for c in classes):
        raise fail('every entry of "classes" must be a non-empty string')
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise fail(f'"classes" lists {", ".join(duplicates)} more than once')

    entries = data["domains"]
    if not isinstance(entries, list) or not entries:
        raise fail('"domains" must be a non-empty list of domain objects')
    domains = tuple(_parse_domain(path.parent, entry, i, fail) for i, entry in enumerate(entries))
    names = [d.name for d in domains]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fail(f"domain {duplicates[0]!r} is listed more than once")
    sources = [d.name for d in domains if d.role == "source"]
    if len(sources) != 1:
        found = ", ".join(sources) if sources else "none"
        raise fail(f'exactly one domain must have role "source" (found: {found})')
    novel = _parse_novel(data.get("novel_classes", []), classes, fail)
    return DataSpec(path=path, classes=tuple(classes), domains=domains, novel_classes=novel)


def _parse_novel(novel: Any, classes: list[str], fail: Fail) -> tuple[str, ...]:
    if not isinstance(novel, list) or not all(isinstance(c, str) for c in novel):
        raise fail('"novel_classes" must be a list of class names')
    unknown = [c for c in novel if c not in classes]
    if unknown:
        raise fail(f'"novel_classes" names {unknown[0]!r}, which is not in "classes"')
    if len(set(novel)) != len(novel):
        raise fail('"novel_classes" lists a class more than once')
    if len(novel) == len(classes):
        raise fail('"novel_classes" names every class; at least one base class must be left to train on')
    return tuple(c for c in classes if c in novel)


def mark_novel(spec: DataSpec, novel: Sequence[str]) -> DataSpec:
    """`spec` with `novel` as its novel classes (none: every class is a base class), checked
    as a spec file's are; `write_spec` writes it."""

    def fail(problem: str) -> ClipgapError:
        return ClipgapError(f"cannot mark novel classes in {spec.path}: {problem}")

    return replace(spec, novel_classes=_parse_novel(list(novel), list(spec.classes), fail))


def _parse_domain(root: Path, entry: Any, index: int, fail: Fail) -> Domain:
    where = f"domains[{index}]"
    if not isinstance(entry, dict):
        raise fail(f"{where} must be a JSON object")
    _check_keys(entry, _DOMAIN_KEYS, {"name", "role", "splits"}, where, fail)
    name = entry["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"{where} has a bad name {name!r}: use letters, digits, '_', '-' or '.'")
    where = f"domain {name!r}"
    role = entry["role"]
    if role not in ROLES:
        raise fail(f'{where} has role {role!r}; use "source" or "target"')
    splits_in = entry["splits"]
    if not isinstance(splits_in, dict) or not splits_in:
        raise fail(f'{where}: "splits" must be a non-empty object mapping split names to paths')
    splits = {}
    for split_name, files in splits_in.items():
        if not _NAME.match(split_name):
            raise fail(f"{where} has a bad split name {split_name!r}")
        if not isinstance(files, dict):
            raise fail(f"{where}, split {split_name!r} must be an object with image_dir, ann_file")
        _check_keys(files, _SPLIT_KEYS, _SPLIT_KEYS, f"{where}, split {split_name!r}", fail)
        image_dir = _resolve(root, files["image_dir"], f"{where}, split {split_name!r}", fail)
        ann_file = _resolve(root, files["ann_file"], f"{where}, split {split_name!r}", fail)
        if not image_dir.is_dir():
            raise fail(f"the image directory {image_dir} of {where}, split {split_name!r} does not exist")
        if not ann_file.is_file():
            raise fail(f"the annotation file {ann_file} of {where}, split {split_name!r} does not exist")
        splits[split_name] = Split(name=split_name, image_dir=image_dir, ann_file=ann_file)

    train_split = None
    if role == "source":
        train_split = entry.get("train_split", DEFAULT_TRAIN_SPLIT)
        _check_split(splits, train_split, "train_split", where, fail)
    elif "train_split" in entry:
        raise fail(f'{where} is a target domain; only the source domain takes "train_split"')
    eval_split = entry.get("eval_split", DEFAULT_EVAL_SPLIT[role])
    _check_split(splits, eval_split, "eval_split", where, fail)
    return Domain(name, role, splits, eval_split, train_split)


def _check_keys(obj: dict, allowed: set[str], required: set[str], where: str, fail: Fail) -> None:
    missing = sorted(required - obj.keys())
    if missing:
        raise fail(f'{where} is missing the key "{missing[0]}"')
    unknown = sorted(obj.keys() - allowed)
    if unknown:
        raise fail(f'{where} has an unknown key "{unknown[0]}"; allowed: {", ".join(sorted(allowed))}')


def _check_split(splits: dict[str, Split], name: Any, key: str, where: str, fail: Fail) -> None:
    if name not in splits:
        raise fail(
            f"{where} has no split {name!r} for its {key} (it has: {', '.join(splits)}); "
            f'add that split or set "{key}"'
        )


def _resolve(root: Path, value: Any, where: str, fail: Fail) -> Path:
    if not isinstance(value, str) or not value:
        raise fail(f"{where}: paths must be non-empty strings")
    return Path(os.path.normpath(root / Path(value).expanduser()))


def load_run_dataset(data: Path, class_names: Sequence[str]) -> DataSpec:
    """The dataset spec at `data`, refused unless its classes are a run's `class_names` (those
    of its class text embeddings), in the same order (label c means the same class in both)."""
    spec = load_spec(data)
    if list(spec.classes) != list(class_names):
        raise ClipgapError(
            f"the dataset's classes ({', '.join(spec.classes)}) differ from the run's class text "
            f"embeddings ({', '.join(class_names)}); use the dataset the run was made for, or a run "
            "whose `clipgap encode-prompts --classes-from` read this dataset's annotations"
        )
    return spec


def set_dataset(dataset: Any, split: Split, metainfo: dict) -> None:
    """Point an mmengine dataset config at a split of the spec (absolute paths, no data_root); a dataset
    wrapper (ClassBalancedDataset, RepeatDataset) passes it to the dataset it wraps."""
    if "dataset" in dataset:
        set_dataset(dataset.dataset, split, metainfo)
        return
    dataset.data_root = ""
    dataset.ann_file = str(split.ann_file)
    dataset.data_prefix = dict(img=f"{split.image_dir}/")
    dataset.metainfo = metainfo
