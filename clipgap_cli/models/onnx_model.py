"""A detector as one ONNX graph that onnxruntime runs alone: the network, MMDetection's test-time
postprocessing and ONNX's NonMaxSuppression, the fixed classes' text embeddings baked in; the
json beside it; and running it.

The graph takes the image resized by the model's resize rule and gives the detections in the
pixels of the image before that resize:

    inputs   image         (1, 3, H, W) float32, RGB, 0-255, any H and W
             scale_factor  (2,) float32: resized width / original width, resized height / original height
    outputs  boxes         (N, 4) float32, x1, y1, x2, y2
             scores        (N,) float32, highest first
             labels        (N,) int64, indices into the json's `classes`

The normalisation (CLIP's mean and std) and the padding to a multiple of 32 are in the graph,
as MMDetection's data preprocessor does them; the resize is not (the caller's image library
does it, as the json's `resize` says). Both detectors have one: GridCLIP (`GridCLIPGraph`) and
CLIP the Gap's C4 Faster R-CNN (`C4Graph`, its RoIAlign as ONNX's half-pixel `RoiAlign`).
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx.operators import shape_as_tensor

from clipgap_cli.artifacts import exported_info
from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import atomic_write, sha256_of

ONNX_FORMAT = 1
OPSET = 17
INPUTS = ("image", "scale_factor")
OUTPUTS = ("boxes", "scores", "labels")
# The pipeline steps an exported model may have at test time: reading the image, the resize the
# json describes, and what only feeds annotations and metadata.
_PIPELINE_STEPS = {"LoadImageFromFile", "Resize", "LoadAnnotations", "PackDetInputs"}


def require(*packages: str) -> None:
    """Refuse, in one line with the fix, when one of the ONNX extra's `packages` does not import."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ClipgapError(
            f"ONNX models need the {' and '.join(missing)} package{'s' * (len(missing) > 1)}: "
            "pip install 'clipgap[onnx]'"
        )


def sidecar_path(model: Path) -> Path:
    """The json beside an ONNX model: `model.onnx` -> `model.json`."""
    return Path(model).with_suffix(".json")


class NonMaxSuppression(torch.autograd.Function):
    """Greedy NMS: boxes (N, 4) x1, y1, x2, y2 and scores (N,) -> the indices (M,) of the boxes
    kept, by descending score, at most `max_out`; a box goes when its IoU with a kept one is
    above `iou_threshold`. mmcv's nms when run, ONNX's NonMaxSuppression in the graph."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_out: int, iou_threshold: float):
        from mmcv.ops import nms

        if len(boxes) == 0:
            return boxes.new_zeros(0, dtype=torch.long)
        _, keep = nms(boxes, scores, iou_threshold)
        return keep[:max_out]

    @staticmethod
    def symbolic(g, boxes, scores, max_out: int, iou_threshold: float):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        selected = g.op(
            "NonMaxSuppression",
            g.op("Unsqueeze", boxes, const([0], torch.long)),  # (1, N, 4): one batch
            g.op("Unsqueeze", scores, const([0, 1], torch.long)),  # (1, 1, N): one class
            const([max_out], torch.long),
            const([iou_threshold], torch.float),
        )  # (M, 3): batch, class, box index
        return g.op("Gather", selected, const(2, torch.long), axis_i=1)


def class_wise_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, max_out: int, iou_threshold: float
) -> torch.Tensor:
    """NMS within each class, as mmcv's `batched_nms` does it: each class's boxes are moved by
    label x (the largest coordinate + 1), so that boxes of different classes never overlap.
    (N, 4), (N,), (N,) -> the indices (M,) kept, by descending score."""
    # The 0 keeps the maximum defined for no boxes; the boxes lie in the image, so it changes nothing.
    largest = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    shifted = boxes + (labels.to(boxes) * (largest + 1))[:, None]
    return NonMaxSuppression.apply(shifted, scores, max_out, iou_threshold)


class RoIAlign(torch.autograd.Function):
    """mmcv's `RoIAlign(aligned=True, pool_mode='avg')` on one image's map when run, ONNX's
    `RoiAlign` (opset 16: half-pixel coordinates, average) in the graph, which computes the
    same bilinear samples: map (1, C, H, W), boxes (R, 4) -> (R, C, S, S)."""

    @staticmethod
    def forward(ctx, feature, boxes, output_size: int, spatial_scale: float, sampling_ratio: int):
        from mmcv.ops import roi_align

        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
        return roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, "avg", True)

    @staticmethod
    def symbolic(g, feature, boxes, output_size: int, spatial_scale: float, sampling_ratio: int):
        def const(value):
            return g.op("Constant", value_t=torch.tensor(value, dtype=torch.long))

        count = g.op("Slice", g.op("Shape", boxes), const([0]), const([1]))
        batch = g.op("ConstantOfShape", count, value_t=torch.tensor([0], dtype=torch.long))
        return g.op(
            "RoiAlign",
            feature,
            boxes,
            batch,
            coordinate_transformation_mode_s="half_pixel",
            mode_s="avg",
            output_height_i=output_size,
            output_width_i=output_size,
            sampling_ratio_i=sampling_ratio,
            spatial_scale_f=spatial_scale,
        )


class _DetectorGraph(nn.Module):
    """What every detector's graph shares: MMDetection's data preprocessing (normalise, then pad
    with zeros to a multiple of `pad_size_divisor`), and boxes clipped to the image and rescaled."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        preprocessor = detector.data_preprocessor
        self.register_buffer("mean", preprocessor.mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", preprocessor.std.view(1, -1, 1, 1).clone())
        self.pad_size_divisor = int(preprocessor.pad_size_divisor)
        self.detector = detector

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) 0-255 -> normalised and padded (1, 3, H', W')."""
        height, width = image.shape[-2:]
        x = (image - self.mean) / self.std
        d = self.pad_size_divisor
        return F.pad(x, (0, (d - width % d) % d, 0, (d - height % d) % d))

    @staticmethod
    def clip(boxes: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Boxes (..., 4) clipped to the unpadded image (1, 3, H, W): x to [0, W], y to [0, H]."""
        size = shape_as_tensor(image)[2:].flip(0).repeat(2).to(boxes)  # w, h, w, h
        return torch.minimum(boxes.clamp(min=0), size)

    @staticmethod
    def keep_sized(min_size: float, boxes: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
        """The boxes (N, 4), and what goes with them, wider and higher than `min_size` (none
        dropped for a negative one)."""
        if min_size < 0:
            return [boxes, *others]
        sized = (boxes[:, 2:] - boxes[:, :2] > min_size).all(dim=1)
        return [t[sized] for t in (boxes, *others)]


def _nms_settings(cfg: Any) -> tuple[float, int]:
    """The IoU threshold and the number of detections kept of a test config's NMS."""
    nms = cfg.get("nms", {})
    if nms.get("type", "nms") != "nms":
        raise ClipgapError(f"--format onnx needs plain NMS at test time, not {nms.get('type')}")
    return float(nms["iou_threshold"]), int(cfg.max_per_img)


class GridCLIPGraph(_DetectorGraph):
    """A GridCLIP detector with its test-time processing, traceable for ONNX: the preprocessing,
    the network, and `BaseDenseHead`'s postprocessing for one image (per level: sigmoid scores
    above `score_thr`, the `nms_pre` best (location, class) pairs; points decoded to boxes
    clipped to the image, rescaled by 1 / scale_factor, scores times centerness, boxes of no
    width or height dropped, class-wise NMS, the first `max_per_img`).

    `forward(image (1, 3, H, W), scale_factor (2,))` -> boxes (N, 4), scores (N,), labels (N,).
    """

    def __init__(self, detector: nn.Module):
        super().__init__(detector)
        head = detector.bbox_head
        cfg = head.test_cfg
        self.score_thr = float(cfg.get("score_thr", 0))
        self.nms_pre = int(cfg.get("nms_pre", -1))
        self.min_bbox_size = float(cfg.get("min_bbox_size", -1))
        self.iou_threshold, self.max_per_img = _nms_settings(cfg)
        self.strides = [stride[0] for stride in head.prior_generator.strides]
        self.prior_offset = float(head.prior_generator.offset)

    def forward(self, image: torch.Tensor, scale_factor: torch.Tensor):
        features = self.detector.extract_feat(self.preprocess(image))
        cls_scores, bbox_preds, centernesses = self.detector.bbox_head(features)
        boxes, scores, labels = [], [], []
        for level, stride in enumerate(self.strides):
            cls_score = cls_scores[level][0]  # (K, h, w)
            classes = cls_score.shape[0]
            level_scores, pairs = _top(cls_score.permute(1, 2, 0).reshape(-1).sigmoid(), self.nms_pre)
            valid = level_scores > self.score_thr  # location-major (location, class) pairs
            level_scores, pairs = level_scores[valid], pairs[valid]
            cells = torch.div(pairs, classes, rounding_mode="floor")
            distances = bbox_preds[level][0].permute(1, 2, 0).reshape(-1, 4)[cells]  # l, t, r, b
            centerness = centernesses[level][0].reshape(-1).sigmoid()[cells]
            points = (_grid(cls_score[0]) + self.prior_offset)[cells] * stride  # (n, 2)
            boxes.append(torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1))
            scores.append(level_scores * centerness)
            labels.append(pairs - cells * classes)
        boxes = self.clip(torch.cat(boxes), image) * (1 / scale_factor).repeat(2)
        boxes, scores, labels = self.keep_sized(
            self.min_bbox_size, boxes, torch.cat(scores), torch.cat(labels)
        )
        keep = class_wise_nms(boxes, scores, labels, self.max_per_img, self.iou_threshold)
        return boxes[keep], scores[keep], labels[keep]


class C4Graph(_DetectorGraph):
    """CLIP the Gap's C4 Faster R-CNN with its test-time processing, traceable for ONNX: the
    preprocessing, V_a, the RPN's proposals as `RPNHead` makes them (the `nms_pre` best anchors,
    deltas decoded and clipped, boxes of no size dropped, NMS, the first `max_per_img`),
    RoIAlign, V_b and the text classifier on each proposal, and `BBoxHead`'s postprocessing
    (softmax, per-class deltas decoded and clipped, rescaled by 1 / scale_factor,
    `multiclass_nms`).

    `forward(image (1, 3, H, W), scale_factor (2,))` -> boxes (N, 4), scores (N,), labels (N,).
    """

    def __init__(self, detector: nn.Module):
        super().__init__(detector)
        rpn, roi = detector.rpn_head, detector.roi_head
        generator = rpn.prior_generator
        if len(generator.strides) != 1 or len(roi.bbox_roi_extractor.roi_layers) != 1:
            raise ClipgapError("--format onnx exports the C4 detector with one feature map only")
        self.register_buffer("base_anchors", generator.base_anchors[0].clone())  # (A, 4)
        self.anchor_stride = float(generator.strides[0][0])
        self.rpn_coder, self.rcnn_coder = rpn.bbox_coder, roi.bbox_head.bbox_coder
        rpn_cfg, rcnn_cfg = rpn.test_cfg, roi.test_cfg
        self.nms_pre = int(rpn_cfg.get("nms_pre", -1))
        self.min_bbox_size = float(rpn_cfg.get("min_bbox_size", -1))
        self.rpn_iou, self.proposals = _nms_settings(rpn_cfg)
        self.score_thr = float(rcnn_cfg.score_thr)
        self.iou_threshold, self.max_per_img = _nms_settings(rcnn_cfg)
        layer = roi.bbox_roi_extractor.roi_layers[0]
        if not layer.aligned or layer.pool_mode != "avg":
            raise ClipgapError("--format onnx exports RoIAlign(aligned=True, pool_mode='avg') only")
        self.roi_size, self.spatial_scale = int(layer.output_size[0]), float(layer.spatial_scale)
        self.sampling_ratio = int(layer.sampling_ratio)

    def forward(self, image: torch.Tensor, scale_factor: torch.Tensor):
        detector = self.detector
        (feature,) = detector.extract_feat(self.preprocess(image))  # (1, C3, h, w)
        (cls_score,), (bbox_pred,) = detector.rpn_head((feature,))
        scores, order = _top(cls_score[0].permute(1, 2, 0).reshape(-1).sigmoid(), self.nms_pre)
        anchors = (_grid(cls_score[0, 0]) * self.anchor_stride).repeat(1, 2)[:, None] + self.base_anchors
        deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, 4)[order]
        boxes = self.clip(_decode(self.rpn_coder, anchors.reshape(-1, 4)[order], deltas), image)
        boxes, scores = self.keep_sized(self.min_bbox_size, boxes, scores)
        keep = class_wise_nms(
            boxes, scores, torch.zeros_like(scores, dtype=torch.long), self.proposals, self.rpn_iou
        )
        proposals = boxes[keep]  # (R, 4)

        regions = RoIAlign.apply(feature, proposals, self.roi_size, self.spatial_scale, self.sampling_ratio)
        cls_score, bbox_pred = detector.roi_head.bbox_head(detector.roi_head.shared_head(regions))
        scores = cls_score.softmax(dim=-1)[:, :-1]  # (R, K): the last column is the background
        classes = scores.shape[1]
        labels = torch.arange(classes).expand_as(scores).reshape(-1)
        deltas = bbox_pred.reshape(-1, 4)  # (R K, 4): proposal-major
        boxes = _decode(self.rcnn_coder, proposals.repeat_interleave(classes, dim=0), deltas)
        boxes = self.clip(boxes, image) * (1 / scale_factor).repeat(2)
        scores = scores.reshape(-1)
        valid = scores > self.score_thr
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        keep = class_wise_nms(boxes, scores, labels, self.max_per_img, self.iou_threshold)
        return boxes[keep], scores[keep], labels[keep]


def _top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest of scores (N,), all of them for k <= 0, highest first, and their indices."""
    count = shape_as_tensor(scores)[0]
    return scores.topk(count if k <= 0 else torch.clamp(count, max=k))


def _grid(grid: torch.Tensor) -> torch.Tensor:
    """The cells (h w, 2), x and y, of a map (h, w), row by row; counted by cumsum, so that the
    graph follows the image's size."""
    ones = torch.ones_like(grid)
    return torch.stack([ones.cumsum(1) - 1, ones.cumsum(0) - 1], dim=-1).reshape(-1, 2)


def _decode(coder: Any, rois: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """`DeltaXYWHBBoxCoder.decode` (mmdet's `delta2bbox`) of deltas (N, 4) on boxes (N, 4), not clipped."""
    deltas = deltas * deltas.new_tensor(coder.stds) + deltas.new_tensor(coder.means)
    centres, sizes = (rois[:, :2] + rois[:, 2:]) * 0.5, rois[:, 2:] - rois[:, :2]
    limit = abs(math.log(16 / 1000))  # `decode`'s wh_ratio_clip, which mmdet's heads leave as it is
    centres = centres + sizes * deltas[:, :2]
    sizes = sizes * deltas[:, 2:].clamp(min=-limit, max=limit).exp()
    return torch.cat([centres - sizes * 0.5, centres + sizes * 0.5], dim=-1)


GRAPHS = {"GridCLIP": GridCLIPGraph, "FasterRCNN": C4Graph}  # a config's model.type -> its graph


def check_exportable(detector_type: str) -> None:
    """Refuse, in one line, a detector type (a config's `model.type`) that has no ONNX form."""
    if detector_type not in GRAPHS:
        raise ClipgapError(
            f"--format onnx exports {' and '.join(GRAPHS)} detectors, not {detector_type}; export a bundle"
        )


def onnx_graph(detector: nn.Module) -> nn.Module:
    """The traceable graph of a built detector, in eval mode; refused in one line for a detector
    that has none."""
    check_exportable(type(detector).__name__)
    return GRAPHS[type(detector).__name__](detector).eval()


def resize_rule(pipeline: Sequence[Mapping]) -> dict[str, Any]:
    """The resize of a test pipeline, for the json: `scale` (long, short) or `scale_factor`,
    the aspect ratio kept, and the rule in words. Refused for a pipeline the graph cannot follow."""
    steps = [dict(step) for step in pipeline]
    others = sorted({step["type"] for step in steps} - _PIPELINE_STEPS)
    resizes = [step for step in steps if step["type"] == "Resize"]
    if others or len(resizes) > 1:
        raise ClipgapError(
            f"--format onnx follows test pipelines of {', '.join(sorted(_PIPELINE_STEPS))} only; "
            f"this model's has {', '.join(others) or 'two Resize steps'}"
        )
    step = resizes[0] if resizes else {"scale_factor": 1.0, "keep_ratio": True}
    scale, factor = step.get("scale"), step.get("scale_factor")
    scale = [scale, scale] if isinstance(scale, int) else scale
    if not step.get("keep_ratio") or (scale is None) == (factor is None) or isinstance(factor, Sequence):
        raise ClipgapError(
            "--format onnx follows a Resize that keeps the aspect ratio, by a scale or one factor; "
            f"this model's test pipeline has {step}"
        )
    if step.get("interpolation", "bilinear") != "bilinear":
        raise ClipgapError(
            f"--format onnx follows a bilinear Resize; this model's is {step['interpolation']}"
        )
    if scale is not None:
        long, short = max(scale), min(scale)
        rule = (
            f"resize keeping the aspect ratio by f = min({long} / the long side, {short} / the short side), "
            "each side to int(side * f + 0.5), bilinear"
        )
    else:
        rule = f"resize each side to int(side * {factor} + 0.5), bilinear" if factor != 1 else "no resize"
    return {
        "scale": None if scale is None else [max(scale), min(scale)],
        "scale_factor": factor,
        "rule": rule,
    }


def write_onnx(detector: nn.Module, cfg: Any, path: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """Export a built detector (eval mode, its config `cfg`) to the ONNX file `path` and write
    the json beside it: `info` (classes, provenance) and what running the graph needs. Each file
    is written whole or not at all; the model only after onnxruntime has given the detector's
    own detections on a probe image. Returns the json's content."""
    require("onnx", "onnxruntime")
    import onnx
    import onnxruntime

    graph = onnx_graph(detector)
    preprocessor = cfg.model.data_preprocessor
    meta = {
        "format": ONNX_FORMAT,
        **info,
        "versions": {
            **info.get("versions", {}),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "model": path.name,
        "opset": OPSET,
        "inputs": {
            "image": "(1, 3, H, W) float32, 0-255, channels as `normalisation.channel_order`, "
            "resized by `resize`",
            "scale_factor": "(2,) float32: resized width / original width, resized height / original height",
        },
        "outputs": {
            "boxes": "(N, 4) float32: x1, y1, x2, y2 in the original image's pixels",
            "scores": "(N,) float32, highest first",
            "labels": "(N,) int64: indices into `classes`",
        },
        "normalisation": {
            "in_graph": True,
            "channel_order": "RGB" if preprocessor.get("bgr_to_rgb") else "BGR",
            "mean": list(preprocessor.mean),
            "std": list(preprocessor.std),
            "pad_size_divisor": graph.pad_size_divisor,
        },
        "resize": resize_rule(cfg.test_dataloader.dataset.pipeline),
        "postprocess": detector.test_cfg.to_dict(),  # the model's test_cfg, which the graph follows
        "palette": (getattr(detector, "dataset_meta", None) or {}).get("palette"),
    }

    def export_and_check(staged: Path) -> None:
        probe = _probe_image()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings on shapes it reads as numbers
            expected = [t.numpy() for t in graph(*probe)]
            torch.onnx.register_custom_op_symbolic("aten::movedim", _movedim, OPSET)
            torch.onnx.export(
                graph,
                probe,
                str(staged),
                input_names=list(INPUTS),
                output_names=list(OUTPUTS),
                dynamic_axes={"image": {2: "height", 3: "width"}, **{o: {0: "detections"} for o in OUTPUTS}},
                opset_version=OPSET,
                dynamo=False,
            )
        onnx.checker.check_model(str(staged))
        inputs = {name: t.numpy() for name, t in zip(INPUTS, probe, strict=True)}
        difference = detection_difference(expected, session(staged, "cpu").run(None, inputs))
        if difference:
            raise ClipgapError(
                f"onnxruntime does not give the model's detections with the graph: {difference}"
            )
        meta["sha256"] = sha256_of(staged)

    atomic_write(path, export_and_check)
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return meta


def _movedim(g, x, source, destination):
    """aten::movedim as ONNX Transpose. torch's own symbolic (2.13) leaves a negative source
    dimension in the permutation, which Transpose refuses: the text classifier's
    `movedim(-1, 1)`."""
    from torch.onnx import symbolic_helper

    rank = symbolic_helper._get_tensor_rank(x)
    source, destination = (
        [d % rank for d in symbolic_helper._get_const(dims, "t", "dims").view(-1).tolist()]
        for dims in (source, destination)
    )
    perm = [None] * rank
    for src, dst in zip(source, destination, strict=True):
        perm[dst] = src
    rest = iter(d for d in range(rank) if d not in source)
    return g.op("Transpose", x, perm_i=[next(rest) if p is None else p for p in perm])


def _probe_image() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed smooth random image of a size that is no multiple of 32 (so the padding is traced),
    and its scale factor."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 6, 8, generator=generator) * 255
    image = F.interpolate(coarse, size=(150, 200), mode="bilinear", align_corners=False)
    return image, torch.tensor([1.0, 1.0])


def detection_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], iou: float = 0.99,
                         score_atol: float = 1e-3) -> str | None:  # fmt: skip
    """How two sets of detections (boxes (N, 4), scores (N,), labels (N,)) differ, or None when
    they are the same: as many of each, each of `a` matched to one of `b` with the same label,
    an IoU of at least `iou` and a score within `score_atol`."""
    (boxes_a, scores_a, labels_a), (boxes_b, scores_b, labels_b) = map(tuple, (a, b))
    if len(boxes_a) != len(boxes_b):
        return f"{len(boxes_a)} detections against {len(boxes_b)}"
    free = np.ones(len(boxes_b), dtype=bool)
    for box, score, label in zip(boxes_a, scores_a, labels_a, strict=True):
        overlaps = np.where(free & (labels_b == label), _iou(box, boxes_b), -1.0)
        best = int(np.argmax(overlaps)) if len(overlaps) else -1
        if best < 0 or overlaps[best] < iou or abs(scores_b[best] - score) > score_atol:
            return f"no match for the class {int(label)} box {np.round(box, 2).tolist()} scoring {score:.4f}"
        free[best] = False
    return None


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (N, 4)."""
    sides = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = sides.prod(axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def session(path: Path, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session of the model file: on CUDA for a cuda `device` where onnxruntime
    has it, else on the CPU; `threads` for its operators (default: onnxruntime's choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


class OnnxDetector:
    """An exported model run by onnxruntime: its json (`info`), and `detect` on an image."""

    def __init__(self, path: Path, device: str = "cpu"):
        require("onnxruntime")
        self.path = Path(path)
        self.info = read_onnx_info(self.path)
        self.session = session(self.path, device)
        from mmdet.datasets.transforms import Resize

        rule = self.info["resize"]
        scale = None if rule["scale"] is None else tuple(rule["scale"])
        self._resize = Resize(scale=scale, scale_factor=rule["scale_factor"], keep_ratio=True)

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    def detect(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An image (H, W, 3) uint8 in RGB -> boxes (N, 4) in its pixels, scores (N,), labels (N,):
        resized as MMDetection's test pipeline does (its `Resize`), then the graph."""
        resized = self._resize({"img": pixels})
        image = resized["img"]
        if self.info["normalisation"]["channel_order"] == "BGR":
            image = image[..., ::-1]
        inputs = {
            "image": np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32),
            "scale_factor": np.asarray(resized["scale_factor"], dtype=np.float32),
        }
        return tuple(self.session.run(None, inputs))


def read_onnx_info(path: Path) -> dict[str, Any]:
    """The json beside an ONNX model, after checking that this clipgap reads its format and that
    the model file is the one it describes."""
    sidecar = sidecar_path(path)
    if not Path(path).is_file():
        raise ClipgapError(f"{path} does not exist; export one with `clipgap export --format onnx`")
    if not sidecar.is_file():
        raise ClipgapError(f"{path} has no {sidecar.name} beside it; export the model again")
    info = exported_info(sidecar)
    version = info["format"]
    if version != ONNX_FORMAT:
        raise ClipgapError(
            f"{sidecar} is of format {version}; this clipgap reads format {ONNX_FORMAT}: "
            "export the model again"
        )
    if info.get("sha256") != sha256_of(Path(path)):
        raise ClipgapError(
            f"{path} is not the model {sidecar.name} describes (its sha256 differs); export the model again"
        )
    return info
