"""clipgap export --format onnx and predict with the .onnx: onnxruntime gives the PyTorch
bundle's detections on every synthetic domain, also through a resize; the docs' example runs
with onnxruntime, numpy and Pillow alone; refusals are one line."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import mmcv
import numpy as np
import pytest
from helpers import assert_one_line_error
from mmengine.config import Config
from PIL import Image
from test_export import invoke

from clipgap_cli.artifacts import load_bundle
from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
from clipgap_cli.data.synth import DOMAINS, synthesize
from clipgap_cli.errors import ClipgapError
from clipgap_cli.models.detectors import build_detector
from clipgap_cli.models.onnx_model import (
    OnnxDetector,
    check_exportable,
    detection_difference,
    read_onnx_info,
    resize_rule,
)
from clipgap_cli.stages.encode_prompts import encode_prompts
from clipgap_cli.stages.export import export, export_onnx
from clipgap_cli.stages.predict import predict
from clipgap_cli.stages.train import Launch, resolve_config, train

DOCS = Path(__file__).parents[1] / "docs" / "cli.md"


# Per detector: its tiny config, its training iterations, and the test score threshold. The 10
# iterations that serve the C4 detector leave every GridCLIP score near 1e-4, thousands of
# candidates within 1e-4 of each other, whose order float rounding decides; after 60 its scores
# spread over 0.01-0.1 and its own threshold (0.05) applies. The C4 detector keeps every
# detection (threshold 0), as test_export's does.
DETECTORS = {
    "gridclip": ("tiny/gridclip_clip-synth_fpn.py", 60, {}),
    "c4": ("tiny/faster-rcnn_clip-tiny_c4_synth_no-aug.py", 10, {"model.test_cfg.rcnn.score_thr": 0.0}),
}


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    """`trained(detector)`: a run of that tiny detector on RN-synth, its bundle and its ONNX
    model; made once per module."""
    made = {}

    def get(detector):
        if detector not in made:
            config, iters, options = DETECTORS[detector]
            root = tmp_path_factory.mktemp(detector)
            run = root / "run"
            encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-synth", pretrained="synth")
            options = {"train_cfg.val_interval": iters, "default_hooks.checkpoint.interval": iters,
                       "param_scheduler": [], **options}  # fmt: skip
            train(run, resolve_config(config), synth_data, launch=Launch(device="cpu"), max_iters=iters,
                  cfg_options=options)  # fmt: skip
            export(run, root / "bundle")
            export(run, root / f"{detector}.onnx", format="onnx")
            made[detector] = run, root / "bundle", root / f"{detector}.onnx"
        return made[detector]

    return get


@pytest.fixture
def gridclip(trained):
    return trained("gridclip")


@pytest.fixture(scope="module")
def domain_images(tmp_path_factory):
    """20 synthetic images per domain, {domain: [paths]}: rendered at 120 px (not a multiple of
    32, so the graph pads), every third one cropped to another size and kept as PNG."""
    out = tmp_path_factory.mktemp("parity")
    synthesize(out, seed=1, images_per_domain=20, size=120)
    images = {}
    for d, domain in enumerate(DOMAINS):
        paths = sorted((out / "voc" / domain / "VOC2007" / "JPEGImages").glob("*.jpg"))
        for i in range(0, len(paths), 3):
            crop = out / f"{domain}_{i}.png"
            Image.open(paths[i]).crop((0, 0, 120 - 8 * (i % 4), 72 + d)).save(crop)
            paths[i] = crop
        images[domain] = paths
    return images


def mmdet_detections(detector, image):
    from mmdet.apis import inference_detector

    pred = inference_detector(detector, str(image)).pred_instances
    return pred.bboxes.numpy(), pred.scores.numpy(), pred.labels.numpy()


@pytest.mark.parametrize("detector", DETECTORS)
def test_onnx_model_gives_the_bundles_detections_on_every_domain(trained, detector, domain_images):
    _, bundle, model = trained(detector)
    detector, _ = build_detector(load_bundle(bundle).config, load_bundle(bundle).weights, "cpu")
    onnx = OnnxDetector(model)
    assert onnx.classes == load_bundle(bundle).classes
    for domain, images in domain_images.items():
        assert len(images) == 20
        for image in images:
            ours = mmdet_detections(detector, image)
            theirs = onnx.detect(mmcv.imread(str(image), channel_order="rgb"))
            assert len(ours[0]) > 0, image
            assert detection_difference(ours, theirs) is None, (domain, image)


def test_onnx_model_follows_a_resize_rule(gridclip, domain_images, tmp_path):
    """A model whose test pipeline resizes: the graph gets the resized image and its scale
    factor, and gives boxes in the original image's pixels, as MMDetection does."""
    run, bundle, _ = gridclip
    cfg = Config.fromfile(str(load_bundle(bundle).config))
    resize = dict(type="Resize", scale=(200, 150), keep_ratio=True)
    cfg.test_dataloader.dataset.pipeline = [resize if s.type == "Resize" else s for s in cfg.test_pipeline]
    info = {k: v for k, v in load_bundle(bundle).info.items() if k != "format"}
    model = tmp_path / "resized.onnx"
    meta = export_onnx(cfg.pretty_text, load_bundle(bundle).weights, model, info)
    assert meta["resize"]["scale"] == [200, 150] and meta["resize"]["scale_factor"] is None
    detector, _ = build_detector(cfg, load_bundle(bundle).weights, "cpu")
    onnx = OnnxDetector(model)
    for image in domain_images["night_rainy"][:4]:
        pixels = mmcv.imread(str(image), channel_order="rgb")
        theirs = onnx.detect(pixels)
        assert detection_difference(mmdet_detections(detector, image), theirs) is None, image
        assert theirs[0][:, 2].max() <= pixels.shape[1] and theirs[0][:, 3].max() <= pixels.shape[0]


def test_predict_with_the_onnx_model_writes_what_the_bundle_does(gridclip, domain_images, tmp_path):
    _, bundle, model = gridclip
    # A threshold that leaves fewer detections than the model's cap of 100 an image: at the cap,
    # which of many nearly equal low scores make the cut is a matter of rounding.
    images = domain_images["daytime_clear"][1:3]
    result = invoke("predict", model, *images, "--out", tmp_path / "onnx", "--score-thr", "0.1")
    assert result.exit_code == 0, result.output
    predict(bundle, images, tmp_path / "bundle", score_thr=0.1)
    for image in images:
        onnx, torch = (
            json.loads((tmp_path / d / f"{image.stem}.json").read_text()) for d in ("onnx", "bundle")
        )
        assert onnx["detections"] and [d["label"] for d in onnx["detections"]] == [
            d["label"] for d in torch["detections"]
        ]
        np.testing.assert_allclose([d["bbox"] for d in onnx["detections"]],
                                   [d["bbox"] for d in torch["detections"]], atol=0.05)  # fmt: skip
        drawn = [np.asarray(Image.open(tmp_path / d / image.name), dtype=float) for d in ("onnx", "bundle")]
        assert drawn[0].shape == drawn[1].shape and np.abs(drawn[0] - drawn[1]).mean() < 0.5


def test_the_docs_example_runs_with_onnxruntime_numpy_and_pillow_alone(gridclip, domain_images, tmp_path):
    _, _, model = gridclip
    example = next(
        b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S) if "onnxruntime" in b
    )
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(example))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported == {"json", "numpy", "onnxruntime", "PIL"}
    assert (
        len([line for line in example.splitlines() if line and not line.startswith(("import", "from"))]) <= 10
    )
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "dwd.onnx").write_bytes(model.read_bytes())
    (tmp_path / "models" / "dwd.json").write_bytes(model.with_suffix(".json").read_bytes())
    image = domain_images["dusk_rainy"][0]  # a PNG: Pillow and OpenCV decode it alike
    Image.open(image).save(tmp_path / "street.png")
    heavy = ("torch", "mmcv", "mmdet", "clipgap_cli")
    probe = f"\nimport sys\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", example + probe], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    *lines, loaded = proc.stdout.strip().splitlines()
    assert loaded == "[]"
    boxes, scores, labels = OnnxDetector(model).detect(mmcv.imread(str(image), channel_order="rgb"))
    classes = read_onnx_info(model)["classes"]
    assert lines == [
        f"{classes[label]} {round(float(score), 3)} {box.round(1).tolist()}"
        for box, score, label in zip(boxes, scores, labels, strict=True)
    ]


def test_detection_difference_sees_each_kind_of_difference():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 30]], dtype=np.float32)
    a = (boxes, np.array([0.9, 0.5], dtype=np.float32), np.array([1, 2]))
    assert detection_difference(a, a) is None
    assert detection_difference(a, tuple(x[::-1] for x in a)) is None  # order does not matter
    assert "2 detections against 1" in detection_difference(a, tuple(x[:1] for x in a))
    moved = boxes + np.array([[0, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    assert "class 2" in detection_difference(a, (moved, a[1], a[2]))
    assert detection_difference(a, (boxes, a[1] + np.float32(0.002), a[2]))
    assert detection_difference(a, (boxes, a[1], np.array([1, 3])))


def test_onnx_refusals_are_one_line(gridclip, domain_images, tmp_path):
    run, _, model = gridclip
    image = domain_images["daytime_clear"][1]
    assert_one_line_error(invoke("export", "--run", run, "--out", tmp_path / "m.pt", "--format", "onnx"),
                          "ends in .onnx")  # fmt: skip
    assert_one_line_error(
        invoke("export", "--run", run, "--out", model, "--format", "onnx"), "exists", "--force"
    )
    assert_one_line_error(invoke("export", "--run", run, "--out", tmp_path / "m", "--format", "tflite"),
                          "--format must be one of bundle, onnx")  # fmt: skip
    result = invoke("predict", model, image, "--out", tmp_path / "p", "--classes", "car,tram")
    assert_one_line_error(result, "--classes", "fixed at export")
    changed = tmp_path / "changed.onnx"
    changed.write_bytes(model.read_bytes() + b"\0")
    changed.with_suffix(".json").write_bytes(model.with_suffix(".json").read_bytes())
    assert_one_line_error(invoke("predict", changed, image, "--out", tmp_path / "p"), "sha256", "export")
    assert not (tmp_path / "p").exists()


def test_the_resize_rule_of_a_test_pipeline():
    load, pack = dict(type="LoadImageFromFile"), dict(type="PackDetInputs")
    rule = resize_rule([load, dict(type="Resize", scale=(600, 1333), keep_ratio=True), pack])
    assert rule["scale"] == [1333, 600] and rule["scale_factor"] is None and "min(1333 / " in rule["rule"]
    assert resize_rule([load, pack]) == {"scale": None, "scale_factor": 1.0, "rule": "no resize"}
    refused = {
        "RandomFlip": [load, dict(type="RandomFlip", prob=0.5), pack],
        "keeps the aspect ratio": [load, dict(type="Resize", scale=(600, 1333), keep_ratio=False)],
        "bilinear": [load, dict(type="Resize", scale_factor=0.5, keep_ratio=True, interpolation="nearest")],
    }
    for message, pipeline in refused.items():
        with pytest.raises(ClipgapError, match=message):
            resize_rule(pipeline)


def test_a_detector_without_a_graph_is_refused():
    with pytest.raises(ClipgapError, match="exports GridCLIP and FasterRCNN detectors, not RetinaNet"):
        check_exportable("RetinaNet")


@pytest.mark.parametrize("hidden", ["onnx", "onnxruntime"])
def test_a_missing_onnx_package_is_one_line(gridclip, domain_images, tmp_path, monkeypatch, hidden):
    run, _, model = gridclip
    monkeypatch.setitem(sys.modules, hidden, None)  # `import` of it now fails, as when not installed
    result = invoke("export", "--run", run, "--out", tmp_path / "m.onnx", "--format", "onnx")
    assert_one_line_error(result, f"need the {hidden} package", "pip install 'clipgap[onnx]'")
    assert not (tmp_path / "m.onnx").exists()
    if hidden == "onnxruntime":  # predict needs onnxruntime alone
        result = invoke("predict", model, domain_images["daytime_clear"][0], "--out", tmp_path / "p")
        assert_one_line_error(result, "need the onnxruntime package", "pip install 'clipgap[onnx]'")
        assert not (tmp_path / "p").exists()
