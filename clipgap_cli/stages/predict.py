"""`predict`: detections on images, drawn and as json, by a bundle or a run's checkpoint, for
the trained classes or for new class names (open vocabulary), or by an exported ONNX model in
onnxruntime, for its fixed classes."""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from PIL import Image, UnidentifiedImageError

from clipgap_cli.artifacts import BUNDLE_INFO, find_checkpoint, load_bundle, load_text_embeddings, run_config
from clipgap_cli.clip.model import load_run_clip
from clipgap_cli.clip.prompts import encode_texts, tokenize
from clipgap_cli.data.spec import IMAGE_SUFFIXES
from clipgap_cli.errors import ClipgapError
from clipgap_cli.models.detectors import build_detector
from clipgap_cli.models.onnx_model import OnnxDetector
from clipgap_cli.rundir import MANIFEST, Run, atomic_write, describe_clip


@dataclass(frozen=True)
class Model:
    """What `predict` runs: a config and weights, their classes, and how to encode new ones."""

    config: Path
    weights: Path
    classes: list[str]
    class_template: str
    clip: dict[str, Any]  # the CLIP identity the class embeddings were made with


@dataclass(frozen=True)
class Prediction:
    """One image's detections above the score threshold, as its json holds them."""

    image: Path
    detections: list[dict[str, Any]]  # {"label", "label_id", "score", "bbox": [x1, y1, x2, y2]}


def open_model(source: Path, checkpoint: str = "best") -> Model:
    """The model of a bundle directory (`clipgap export`), or of a run directory's checkpoint
    (`best`, `last` or a file)."""
    source = Path(source)
    if (source / BUNDLE_INFO).is_file():
        bundle = load_bundle(source)
        info = bundle.info
        return Model(bundle.config, bundle.weights, bundle.classes, info["class_template"], info["clip"])
    if (source / MANIFEST).is_file():
        run = Run.open(source)
        text = load_text_embeddings(run)
        weights = find_checkpoint(run, checkpoint)
        return Model(run_config(run), weights.path, list(text.class_names), text.class_template, text.clip)
    if not source.exists():
        raise ClipgapError(f"{source} does not exist; give a bundle (clipgap export) or a run directory")
    raise ClipgapError(
        f"{source} is neither a clipgap bundle ({BUNDLE_INFO}) nor a run directory ({MANIFEST})"
    )


def find_images(paths: Sequence[Path]) -> list[Path]:
    """The images to detect on: the files given, and the image files of the directories given,
    each checked to be an image that can be read; their names must differ (outputs are named
    after them)."""
    images = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ClipgapError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise ClipgapError(f"image {path} does not exist")
    for image in images:
        try:
            with Image.open(image) as opened:
                opened.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ClipgapError(
                f"{image} is not an image that can be read (JPEG, PNG, BMP, TIFF, WebP)"
            ) from None
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise ClipgapError(
                f"{stems[image.stem]} and {image} would write the same outputs ({image.stem}.json); "
                "rename one or predict them separately"
            )
        stems[image.stem] = image
    return images


def class_embeddings(model: Model, names: Sequence[str], pretrained: Path | None = None) -> torch.Tensor:
    """(K', D) text embeddings of new class names, prompted and encoded as the model's own
    classes were: the same template, the same CLIP model."""
    clip, loaded = load_run_clip(model.clip, pretrained)
    if loaded != model.clip:
        raise ClipgapError(
            f"--pretrained is CLIP {describe_clip(loaded)}, but the model's classes were encoded with "
            f"{describe_clip(model.clip)}; pass the same weights file"
        )
    prompts = [model.class_template.format(name) for name in names]
    return encode_texts(clip, tokenize(model.clip["model"], prompts))


def predict(
    source: Path,
    images: Sequence[Path],
    out: Path,
    *,
    classes: Sequence[str] | None = None,
    score_thr: float = 0.3,
    checkpoint: str = "best",
    pretrained: Path | None = None,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Prediction]:
    """Detect on `images` and write, per image, `<out>/<stem>.json` (detections with a score of
    at least `score_thr`, boxes in image pixels) and the image with those boxes drawn
    (`<out>/<name>`). With `classes`, the text classifier detects those names instead of the
    trained classes (the head's `set_vocabulary`, which also decides their box regression).
    A `.onnx` `source` (`export --format onnx`) runs in onnxruntime, for its exported classes
    and down to its exported score threshold. The images and `out` are checked before the
    detector is built."""
    if not 0 <= score_thr <= 1:
        raise ClipgapError(f"--score-thr must be in [0, 1], got {score_thr}")
    onnx = Path(source).suffix == ".onnx"
    if onnx and classes is not None:
        raise ClipgapError(
            "--classes needs a bundle or a run directory: an ONNX model's classes are fixed at export"
        )
    model = OnnxDetector(source, device) if onnx else open_model(source, checkpoint)
    files = find_images(images)
    out = Path(out)
    if any(image.parent.resolve() == out.resolve() for image in files):
        raise ClipgapError(f"--out {out} holds the images themselves; the drawn images would replace them")
    if onnx:
        names, dataset_meta, detect = _onnx_detector(model)
    else:
        names = list(classes) if classes is not None else model.classes
        new_names = classes is not None
        dataset_meta, detect = _mmdet_detector(model, names, new_names, score_thr, pretrained, device)
    visualizer = _visualizer(dataset_meta)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ClipgapError(f"cannot make the output directory {out}: {err.strerror or err}") from None
    predictions = []
    for done, image in enumerate(files, 1):
        with torch.no_grad():
            try:
                sample = detect(image)
            except Exception as err:  # the decoder's own error on a file PIL could parse
                raise ClipgapError(f"cannot read image {image}: {type(err).__name__}: {err}") from None
        predictions.append(_write(out, image, sample, names, score_thr, visualizer))
        if on_progress:
            on_progress(done, len(files))
    return predictions


def _mmdet_detector(
    model: Model, names: list[str], new_names: bool, score_thr: float, pretrained: Path | None, device: str
) -> tuple[dict, Callable[[Path], Any]]:
    """The detector's dataset meta (for drawing) and its detection of one image file, a
    `DetDataSample`; for `names` instead of the trained classes if `new_names`."""
    from mmdet.apis import inference_detector

    vocabulary = class_embeddings(model, names, pretrained) if new_names else None
    cfg = Config.fromfile(str(model.config))
    _lower_score_thr(cfg.model.get("test_cfg"), score_thr)
    detector, _ = build_detector(cfg, model.weights, device)
    if vocabulary is not None:
        _set_vocabulary(detector, vocabulary)
    detector.dataset_meta = {**detector.dataset_meta, "classes": tuple(names)}
    return detector.dataset_meta, lambda image: inference_detector(detector, str(image))


def _onnx_detector(model: OnnxDetector) -> tuple[list[str], dict, Callable[[Path], Any]]:
    """An ONNX model's classes, dataset meta (as its bundle's, for the same drawings) and
    detection of one image file, a `DetDataSample` as MMDetection's."""
    import mmcv
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    def detect(image: Path) -> DetDataSample:
        pixels = mmcv.imread(str(image), channel_order="rgb")  # decoded as MMDetection's pipeline does
        boxes, scores, labels = (torch.from_numpy(a) for a in model.detect(pixels))
        sample = DetDataSample(metainfo={"ori_shape": pixels.shape[:2]})
        sample.pred_instances = InstanceData(bboxes=boxes, scores=scores, labels=labels)
        return sample

    palette = model.info.get("palette")
    meta = {"classes": tuple(model.classes), **({"palette": [tuple(c) for c in palette]} if palette else {})}
    return model.classes, meta, detect


def _lower_score_thr(test_cfg: Any, score_thr: float) -> None:
    """Let the detector keep detections down to `score_thr` where its own threshold is higher
    (the stock 0.05); NMS is per class, so the detections it kept stay as they were."""
    if isinstance(test_cfg, dict):
        for key, value in test_cfg.items():
            if key == "score_thr" and isinstance(value, float | int) and value > score_thr:
                test_cfg[key] = score_thr
            else:
                _lower_score_thr(value, score_thr)


def _set_vocabulary(detector: torch.nn.Module, vocabulary: torch.Tensor) -> None:
    heads = [m for m in detector.modules() if callable(getattr(m, "set_vocabulary", None))]
    if not heads:
        raise ClipgapError("this detector has no text classifier, so it cannot take new class names")
    try:
        for head in heads:
            head.set_vocabulary(vocabulary)
    except ValueError as err:
        raise ClipgapError(f"cannot use new class names with this model: {err}") from None


def _visualizer(dataset_meta: dict):
    from mmdet.registry import VISUALIZERS

    # mmengine keeps visualizers by name for the whole process: a fresh name each call.
    visualizer = VISUALIZERS.build(
        dict(type="DetLocalVisualizer", name=f"clipgap_predict_{uuid.uuid4().hex}")
    )
    visualizer.dataset_meta = dataset_meta
    return visualizer


def _write(out: Path, image: Path, sample, names: Sequence[str], score_thr: float, visualizer) -> Prediction:
    import mmcv

    pred = sample.pred_instances
    keep = pred.scores >= score_thr
    boxes, scores, labels = (t[keep].cpu() for t in (pred.bboxes, pred.scores, pred.labels))
    detections = [
        {"label": names[label], "label_id": label, "score": score, "bbox": box}
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True)
    ]
    height, width = sample.metainfo["ori_shape"]
    record = {
        "image": str(image),
        "width": width,
        "height": height,
        "classes": list(names),
        "score_thr": score_thr,
        "detections": detections,
    }
    json_path, drawn_path = out / f"{image.stem}.json", out / image.name
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))
    with warnings.catch_warnings():
        # mmengine warns for each box that touches the image border; the boxes are the model's.
        warnings.filterwarnings("ignore", message=".*out of bounds", category=UserWarning)
        visualizer.add_datasample(
            image.stem,
            mmcv.imread(str(image), channel_order="rgb"),
            sample,
            draw_gt=False,
            pred_score_thr=score_thr,
        )
    drawn = visualizer.get_image()
    atomic_write(drawn_path, lambda tmp: mmcv.imwrite(mmcv.rgb2bgr(drawn), str(tmp)))
    return Prediction(image, detections)
