"""Stage `export`: a trained detector as one self-contained bundle that plain MMDetection runs.

A bundle is a directory of four files:
    config.py    the detector's MMDetection config, with nothing outside the bundle in it: the
                 class text embeddings and the semantic augmentations' means are written in
                 (exact float32, base64), and CLIP is built without weights (the checkpoint
                 holds them all);
    model.pth    the trained weights and the class names (`meta.dataset_meta.classes`), no
                 optimiser state;
    bundle.json  the bundle format, the classes, the class prompt template, the CLIP model
                 (for new class names), the checkpoint it came from, the versions, the sha256
                 of config.py and model.pth;
    README.md    how to run it.
`mmdet.apis.DetInferencer(model="config.py", weights="model.pth")` runs it wherever clipgap
is installed (its config imports `clipgap_cli.models`, the registered components).

With `--format onnx` the detector built from that config becomes one ONNX graph for
onnxruntime, `MODEL.onnx`, with `MODEL.json` beside it (`clipgap_cli.models.onnx_model`).
"""

from __future__ import annotations

import json
import os
import pprint
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from clipgap_cli.artifacts import (
    BUNDLE_CONFIG,
    BUNDLE_FORMAT,
    BUNDLE_INFO,
    BUNDLE_README,
    BUNDLE_WEIGHTS,
    Bundle,
    find_checkpoint,
    load_text_embeddings,
    read_checkpoint,
    run_config,
    trained_classes,
)
from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import atomic_write, sha256_of
from clipgap_cli.models.detectors import build_detector, self_contained_model
from clipgap_cli.models.onnx_model import check_exportable, require, sidecar_path, write_onnx
from clipgap_cli.rundir import Run, describe_clip
from clipgap_cli.versions import stack_versions

FORMATS = ("bundle", "onnx")

# Of the composed training config, what inference needs besides the model and the test data.
_RUNTIME_KEYS = ("default_scope", "custom_imports", "backend_args")


def export(
    run_path: Path, out: Path, checkpoint: str = "best", *, force: bool = False, format: str = "bundle"
) -> Bundle | dict[str, Any]:
    """Write the bundle of the run's checkpoint (`best`, `last` or a file) to `out`; with
    `format="onnx"`, its ONNX model (`export_onnx`) instead.

    The bundle appears whole or not at all: it is written into a temporary sibling of `out`,
    checked (the config builds a detector that takes the weights exactly), then renamed into
    place. An existing non-empty `out` is replaced only with `force`.
    """
    if format not in FORMATS:
        raise ClipgapError(f"--format must be one of {', '.join(FORMATS)}, got {format}")
    if format == "onnx":
        require("onnx", "onnxruntime")
    run = Run.open(run_path)
    text = load_text_embeddings(run)
    weights = find_checkpoint(run, checkpoint)
    cfg = Config.fromfile(str(run_config(run)))
    out = Path(out)
    if format == "onnx":
        check_exportable(cfg.model.type)
        _check_onnx_out(out, force)
    elif out.exists() and not (out.is_dir() and (force or not any(out.iterdir()))):
        what = "a file" if not out.is_dir() else "not empty"
        raise ClipgapError(f"--out {out} is {what}; choose a new directory, or pass --force to replace it")

    saved = read_checkpoint(weights.path)
    state_dict = saved["state_dict"]
    classes = trained_classes(run, weights.rel, text.class_names)  # without novel classes
    config_text = bundle_config(cfg, state_dict, classes)
    info = {
        "format": BUNDLE_FORMAT,
        "detector": cfg.model.type,
        "classes": classes,
        "class_template": text.class_template,
        "clip": text.clip,
        "checkpoint": {
            "name": weights.path.name,
            "sha256": weights.sha256,
            "iter": saved.get("meta", {}).get("iter"),
        },
        "versions": stack_versions(),
    }
    if format == "onnx":
        return export_onnx(config_text, weights.path, out, {k: v for k, v in info.items() if k != "format"})

    staging = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # with the umask's mode, as the bundle directory should have
        (staging / BUNDLE_CONFIG).write_text(config_text, encoding="utf-8")
        meta = {"dataset_meta": {"classes": classes}, "iter": info["checkpoint"]["iter"]}
        # Through atomic_write: torch's writer reports a full disk as a bare RuntimeError.
        bundle_weights = {"meta": meta, "state_dict": state_dict}
        atomic_write(staging / BUNDLE_WEIGHTS, lambda tmp: torch.save(bundle_weights, tmp))
        _check_loads(staging)
        info["files"] = {name: sha256_of(staging / name) for name in (BUNDLE_CONFIG, BUNDLE_WEIGHTS)}
        (staging / BUNDLE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (staging / BUNDLE_README).write_text(_readme(info), encoding="utf-8")
        for file in staging.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        _replace_dir(staging, out)
    except OSError as err:
        raise ClipgapError(f"cannot write the bundle {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle(out, info)


def export_onnx(config_text: str, weights: Path, out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write the detector of a bundle config (`bundle_config`) with the checkpoint `weights` as
    the ONNX model `out` and its json (`write_onnx`); returns the json's content."""
    cfg = Config.fromstring(config_text, ".py")
    detector, _ = build_detector(cfg, weights, "cpu")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_onnx(detector, cfg, out, info)
    except OSError as err:
        raise ClipgapError(f"cannot write the ONNX model {out}: {err.strerror or err}") from None


def _check_onnx_out(out: Path, force: bool) -> None:
    if out.suffix != ".onnx":
        raise ClipgapError(f"--out {out}: an ONNX model's file name ends in .onnx")
    taken = [path for path in (out, sidecar_path(out)) if path.exists()]
    if taken and not (force and all(path.is_file() for path in taken)):
        raise ClipgapError(f"--out {taken[0]} exists; choose a new name, or pass --force to replace it")


def bundle_config(cfg: Config, state_dict: dict[str, torch.Tensor], classes: list[str]) -> str:
    """The text of a config that builds the trained detector from the bundle alone.

    The model config's run files are replaced by the values the trained model holds, and
    every CLIP is built without weights (`self_contained_model`); the test data keeps its
    pipeline and classes but no paths. The tensors are written as `encode_tensor` text,
    which reads back bit for bit.
    """
    model = self_contained_model(cfg.model, state_dict)
    dataset = cfg.test_dataloader.dataset
    pipeline = [step for step in dataset.pipeline if step["type"] != "LoadAnnotations"]  # no annotations
    sections = {key: cfg[key] for key in _RUNTIME_KEYS if key in cfg}
    sections["model"] = model
    sections["test_pipeline"] = pipeline
    sections["test_dataloader"] = dict(
        batch_size=1,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(
            type=dataset.type, metainfo=dict(classes=tuple(classes)), pipeline=pipeline, test_mode=True
        ),
    )
    sections["visualizer"] = dict(type="DetLocalVisualizer", name="visualizer")
    header = (
        "# A clipgap bundle's detector: run it with mmdet.apis.DetInferencer(model='config.py', "
        "weights='model.pth')\n# wherever clipgap is installed. Written by `clipgap export`; "
        "the encoded tensors are the trained model's values.\n\n"
    )
    body = "\n".join(
        f"{key} = {pprint.pformat(_plain(value), width=110, compact=True, sort_dicts=False)}"
        for key, value in sections.items()
    )
    return header + body + "\n"


def _plain(value: Any) -> Any:
    """ConfigDicts as dicts, for `pprint`."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _check_loads(bundle_dir: Path) -> None:
    """Build the detector from the bundle's config and load its weights strictly: every
    trained tensor has its place and the config needs nothing outside the bundle."""
    import mmdet.utils
    from mmdet.registry import MODELS

    mmdet.utils.register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(bundle_dir / BUNDLE_CONFIG))
    model = MODELS.build(cfg.model)
    state_dict = torch.load(bundle_dir / BUNDLE_WEIGHTS, map_location="cpu", weights_only=True)["state_dict"]
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ClipgapError(f"the exported config does not fit the checkpoint's weights: {detail}") from None


def _replace_dir(staging: Path, out: Path) -> None:
    """Put `staging` at `out`; an existing `out` is moved aside first and removed after."""
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(staging, out)


def _readme(info: dict[str, Any]) -> str:
    classes = ", ".join(info["classes"])
    return f"""# clipgap model bundle

A {info["detector"]} detector trained with clipgap {info["versions"].get("clipgap")}, exported from
checkpoint `{info["checkpoint"]["name"]}` (sha256 `{info["checkpoint"]["sha256"][:12]}`).

- Classes ({len(info["classes"])}): {classes}
- CLIP: {describe_clip(info["clip"])}; class prompt: `{info["class_template"]}`

Detect, for the trained classes or for new class names, with clipgap installed:

    clipgap predict . IMAGE... --out predictions/
    clipgap predict . IMAGE... --out predictions/ --classes "car,bus,tram"

or with MMDetection itself (clipgap installed: the config imports its registered components):

    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model="config.py", weights="model.pth", device="cpu")
    result = inferencer("image.jpg")

`config.py` needs no other file: the class text embeddings and the semantic augmentations are
written into it. `model.pth` holds every weight, CLIP's included. `bundle.json` records the CLIP
model the class names must be encoded with, the versions, and the files' sha256.
"""
