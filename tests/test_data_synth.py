"""`clipgap data synth`: the synthetic benchmark, and the mmdet dataset configs that read it."""

import copy
import hashlib
import json
import multiprocessing.pool
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error
from PIL import Image
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.data.convert import DWD_CLASSES, DWD_DOMAINS, convert_voc
from clipgap_cli.data.spec import SPEC_NAME, load_spec, set_dataset
from clipgap_cli.data.synth import VOC_DIR as VOC
from clipgap_cli.data.synth import render_preview, synthesize
from clipgap_cli.data.synth.looks import LOOKS, at_severity
from clipgap_cli.errors import ClipgapError
from clipgap_cli.stages.train import CONFIGS as PACKAGE_CONFIGS

CONFIGS = PACKAGE_CONFIGS / "_base_" / "datasets"
SIZE, IMAGES = 128, 8


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory whose data/synth holds 5 x 8 images at 128 px (seed 0), as the
    dataset configs expect by default."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "data" / "synth", seed=0, images_per_domain=IMAGES, size=SIZE)
    return root


@pytest.fixture(scope="module")
def out(workdir):
    return workdir / "data" / "synth"


def test_five_domains_in_the_dwd_layout_with_every_class(out):
    spec = load_spec(out)
    assert spec.classes == DWD_CLASSES
    assert [d.name for d in spec.domains] == list(DWD_DOMAINS)
    assert spec.source.name == "daytime_clear" and spec.train_split.name == "train"
    assert {d.name: d.eval_split for d in spec.domains} == {
        "daytime_clear": "test",
        "night_sunny": "train",
        "dusk_rainy": "train",
        "night_rainy": "train",
        "daytime_foggy": "train",
    }
    for domain in DWD_DOMAINS:
        voc = out / "voc" / domain / "VOC2007"
        assert (voc / "ImageSets" / "Main" / "train.txt").read_text().split() == [
            f"{i:06d}" for i in range(6)
        ]
        assert (voc / "ImageSets" / "Main" / "test.txt").read_text().split() == ["000006", "000007"]
        assert (
            len(list((voc / "JPEGImages").glob("*.jpg")))
            == len(list((voc / "Annotations").glob("*.xml")))
            == 8
        )
        labels = set()
        for split in spec.domain(domain).splits.values():
            labels |= {a["category_id"] for a in json.loads(split.ann_file.read_text())["annotations"]}
        assert labels == set(range(1, 8)), domain


def test_images_and_boxes_are_sound(out):
    spec = load_spec(out)
    for domain in spec.domains:
        split = domain.splits["train"]
        coco = json.loads(split.ann_file.read_text())
        assert len(coco["images"]) == 6
        for image in coco["images"]:
            with Image.open(split.image_dir / image["file_name"]) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SIZE, SIZE))
        objects = sum(
            len(ET.parse(p).findall("object")) for p in (split.image_dir.parent / "Annotations").glob("*")
        )
        test = json.loads(domain.splits["test"].ann_file.read_text())
        assert len(coco["annotations"]) + len(test["annotations"]) == objects  # nothing lost in conversion
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE and ann["iscrowd"] == 0
            assert 0.05 * SIZE <= max(w, h) <= 0.6 * SIZE  # neither specks nor the whole image


def test_the_domains_really_differ(tmp_path):
    full = tmp_path / "full"  # the full conditions; the default severity is milder
    synthesize(full, seed=0, images_per_domain=IMAGES, size=SIZE, severity=1.0)

    def stats(domain):
        """Mean brightness, mean horizontal gradient (edge contrast), blue minus red."""
        pixels = np.stack(
            [np.asarray(Image.open(p), np.float32) for p in (full / "voc" / domain).rglob("*.jpg")]
        )
        grey = pixels.mean(axis=3)
        return grey.mean(), np.abs(np.diff(grey, axis=2)).mean(), (pixels[..., 2] - pixels[..., 0]).mean()

    day, night, dusk, night_rain, fog = (stats(d) for d in DWD_DOMAINS)
    assert night[0] < 0.4 * day[0] and night_rain[0] < 0.4 * day[0]  # dark
    assert dusk[0] < 0.75 * day[0] and dusk[2] < day[2] - 20  # dimmer and warmer
    assert fog[1] < 0.6 * day[1] and fog[0] > day[0]  # washed out and bright


def test_severity_moves_the_targets_from_the_clear_day_to_the_full_condition(tmp_path):
    clear = LOOKS["daytime_clear"]
    for look in LOOKS.values():
        assert at_severity(look, 1) == look and at_severity(look, 0) == clear
        half = at_severity(look, 0.5)
        assert half.gain == pytest.approx(
            tuple((a + b) / 2 for a, b in zip(clear.gain, look.gain, strict=True))
        )
        assert half.wet == look.wet and not at_severity(look, 0).wet

    def brightness(severity):
        synthesize(tmp_path / str(severity), seed=0, images_per_domain=4, size=64, severity=severity)
        return {
            d: np.mean(
                [
                    np.asarray(Image.open(p), np.float32).mean()
                    for p in (tmp_path / str(severity)).glob(f"voc/{d}/VOC2007/JPEGImages/*.jpg")
                ]
            )
            for d in ("daytime_clear", "night_sunny", "night_rainy")
        }

    none, half, full = brightness(0.0), brightness(0.5), brightness(1.0)
    assert none["daytime_clear"] == half["daytime_clear"] == full["daytime_clear"]  # the source never changes
    for night in ("night_sunny", "night_rainy"):
        assert none[night] > half[night] > full[night]
        assert none[night] == pytest.approx(none["daytime_clear"], rel=0.2)  # severity 0: lit as the day


def test_same_seed_gives_identical_files_and_another_seed_differs(out, tmp_path):
    synthesize(tmp_path / "again", seed=0, images_per_domain=IMAGES, size=SIZE)
    assert _files(tmp_path / "again") == _files(out)
    synthesize(tmp_path / "other", seed=1, images_per_domain=IMAGES, size=SIZE)
    other, ours = _files(tmp_path / "other"), _files(out)
    assert other.keys() == ours.keys()
    changed = {name for name in ours if other[name] != ours[name]}
    assert {n for n in ours if n.endswith((".jpg", ".xml"))} <= changed


def test_more_source_images_extend_the_default_source_and_leave_the_targets_alone(out, tmp_path):
    more = tmp_path / "more"
    synthesize(more, seed=0, images_per_domain=IMAGES, size=SIZE, source_images=2 * IMAGES)
    ours, theirs = _files(out), _files(more)
    assert {n: h for n, h in theirs.items() if "daytime_clear" not in n} == {
        n: h for n, h in ours.items() if "daytime_clear" not in n
    }
    images = f"{VOC}/daytime_clear/VOC2007/JPEGImages"
    assert all(theirs[f"{images}/{i:06d}.jpg"] == ours[f"{images}/{i:06d}.jpg"] for i in range(IMAGES))
    assert len([n for n in theirs if n.startswith(images)]) == 2 * IMAGES
    splits = more / VOC / "daytime_clear" / "VOC2007" / "ImageSets" / "Main"
    assert [len((splits / f"{s}.txt").read_text().split()) for s in ("train", "test")] == [12, 4]
    coco = json.loads((more / "annotations" / "daytime_clear_test.json").read_text())
    assert len(coco["images"]) == 4


def test_converting_the_voc_tree_again_reproduces_the_coco_json(out, tmp_path):
    convert_voc(out / "voc", tmp_path)
    assert _files(tmp_path / "annotations") == _files(out / "annotations")


def test_preview_shows_every_domain_and_is_deterministic():
    grid = render_preview(seed=0, size=64, columns=2)
    assert grid.size == (2 * 64 + 2, 5 * 64 + 4 * 2)
    assert grid.tobytes() == render_preview(seed=0, size=64, columns=2).tobytes()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(images_per_domain=1), "too few"),
        (dict(size=32), "--size 32 is out of range"),
        (dict(seed=-1), "--seed -1 is negative"),
        (dict(severity=1.5), "--severity 1.5 is out of range"),
        (dict(source_images=1), "--source-images 1 is too few"),
    ],
)
def test_bad_arguments_fail_clearly(tmp_path, kwargs, message):
    with pytest.raises(ClipgapError, match=message):
        synthesize(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_renders_reports_and_writes_the_preview(tmp_path):
    preview = tmp_path / "preview.png"
    result = invoke(
        "data", "synth", tmp_path / "out", "--images-per-domain", 2, "--size", 64, "--preview", preview
    )
    assert result.exit_code == 0, result.output
    assert "rendered 10 images in" in result.stdout and "night_rainy" in result.stdout
    assert Image.open(preview).format == "PNG"
    assert load_spec(tmp_path / "out").path == (tmp_path / "out" / SPEC_NAME).resolve()


def test_cli_bad_input_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line_error(invoke("data", "synth", tmp_path / "file"), "is a file")
    result = invoke("data", "synth", tmp_path / "out", "--size", 10)
    assert_one_line_error(result, "--size 10 is out of range; give an integer in 64..1024")
    result = invoke("data", "synth", tmp_path / "out", "--severity", "nan")
    assert_one_line_error(result, "--severity nan is out of range; give a value in [0, 1]")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def mmdet_registry():
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)


@pytest.mark.parametrize("name", ["dwd", "voc_to_art", "synth"])
def test_dataset_configs_load_with_the_published_protocol(mmdet_registry, name):
    from mmengine import Config

    cfg = Config.fromfile(CONFIGS / f"{name}.py")
    assert cfg.val_evaluator == dict(type="VOCMetric", metric="mAP", eval_mode="11points")
    assert cfg.train_dataloader.dataset.type == "CocoDataset"
    assert cfg.train_dataloader.dataset.metainfo.classes == cfg.classes
    assert cfg.val_dataloader.dataset.metainfo.classes == cfg.classes
    assert cfg.val_dataloader.dataset.test_mode and cfg.test_dataloader == cfg.val_dataloader
    source, train_split, eval_split = {"voc_to_art": ("voc", "trainval", "test")}.get(
        name, ("daytime_clear", "train", "test")
    )
    assert cfg.train_dataloader.dataset.ann_file.endswith(f"annotations/{source}_{train_split}.json")
    assert cfg.val_dataloader.dataset.ann_file.endswith(f"annotations/{source}_{eval_split}.json")
    assert not any(Path(v).is_absolute() for v in (cfg.data_root, cfg.get("image_root", "")) if v)


def test_dwd_config_agrees_with_the_converted_spec(mmdet_registry, tmp_path):
    from mmengine import Config

    cfg = Config.fromfile(CONFIGS / "dwd.py")
    spec = convert_voc(Path(__file__).parent / "fixtures" / "voc_small", tmp_path).spec
    assert cfg.classes == spec.classes
    assert Path(cfg.train_dataloader.dataset.ann_file).name == spec.train_split.ann_file.name
    source = spec.eval_split(spec.source.name)
    assert Path(cfg.val_dataloader.dataset.ann_file).name == source.ann_file.name
    assert cfg.val_dataloader.dataset.data_prefix.img.endswith(f"{spec.source.name}/VOC2007/JPEGImages/")


def test_synth_config_builds_datasets_that_yield_samples(mmdet_registry, workdir, monkeypatch):
    import torch
    from mmdet.registry import DATASETS, METRICS
    from mmengine import Config
    from mmengine.structures import InstanceData

    monkeypatch.chdir(workdir)  # the config's data_root, data/synth/, is relative
    # eval_map forks a process pool per evaluation; forking a process that holds torch's
    # threads can stall, and threads compute the same.
    monkeypatch.setattr("mmdet.evaluation.functional.mean_ap.Pool", multiprocessing.pool.ThreadPool)
    cfg = Config.fromfile(CONFIGS / "synth.py")
    spec = load_spec(cfg.data_root)
    assert cfg.val_dataloader.dataset.ann_file == f"{cfg.data_root}annotations/daytime_clear_test.json"

    train = DATASETS.build(cfg.train_dataloader.dataset)
    sample = train[0]
    assert sample["inputs"].shape == (3, SIZE, SIZE) and sample["inputs"].dtype == torch.uint8
    coco = json.loads(spec.train_split.ann_file.read_text())
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    boxes = sample["data_samples"].gt_instances.bboxes.tensor
    if sample["data_samples"].flip:
        boxes = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([SIZE, 0, SIZE, 0])
    expected = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in first)]
    assert boxes.tolist() == expected
    assert sample["data_samples"].gt_instances.labels.tolist() == [a["category_id"] - 1 for a in first]

    # Each domain's evaluation set, as `clipgap evaluate` makes it of the test dataset, through
    # the evaluator: its own boxes as predictions score 1.
    for domain in (d.name for d in spec.domains):
        dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
        set_dataset(dataset_cfg, spec.eval_split(domain), dict(classes=spec.classes))
        dataset = DATASETS.build(dataset_cfg)
        assert len(dataset) == (2 if domain == "daytime_clear" else 6)
        metric = METRICS.build(cfg.val_evaluator)
        metric.dataset_meta = dataset.metainfo
        for i in range(len(dataset)):
            data_sample = dataset[i]["data_samples"]
            gt = data_sample.gt_instances
            data_sample.pred_instances = InstanceData(
                bboxes=gt.bboxes.tensor, scores=torch.ones(len(gt)), labels=gt.labels
            )
            metric.process({}, [data_sample.to_dict()])
        assert metric.evaluate(len(dataset))["pascal_voc/mAP"] == 1.0, domain


def test_extra_domains_are_targets_after_the_five_and_leave_them_alone(out, tmp_path):
    extra = tmp_path / "extra"
    synthesize(extra, seed=0, images_per_domain=IMAGES, size=SIZE, extra_domains=["night_fog", "day_snow"])
    ours, theirs = _files(out), _files(extra)
    assert {n: h for n, h in theirs.items() if n in ours and n != SPEC_NAME} == {
        n: h for n, h in ours.items() if n != SPEC_NAME
    }
    spec = load_spec(extra)
    assert [d.name for d in spec.domains] == [*DWD_DOMAINS, "day_snow", "night_fog"]
    assert all(d.role == "target" for d in spec.domains[1:])
    assert [d.name for d in spec.domains[:5]] == [d.name for d in load_spec(out).domains]
    # Each extra domain looks as its condition does at the default severity, unlike the others.
    means = {
        d: np.mean([np.asarray(Image.open(p)) for p in sorted((extra / VOC / d).rglob("*.jpg"))[:4]])
        for d in ("daytime_clear", "day_snow", "night_fog")
    }
    assert means["night_fog"] < means["daytime_clear"] and means["day_snow"] != means["daytime_clear"]


def test_extra_domains_must_be_other_conditions_of_the_grid(tmp_path):
    with pytest.raises(ClipgapError, match="night_rain is the benchmark's own night_rainy"):
        synthesize(tmp_path / "out", extra_domains=["night_rain"])
    with pytest.raises(ClipgapError, match="--extra-domain mars is not in the grid; choose from: day_cloudy"):
        synthesize(tmp_path / "out", extra_domains=["mars"])
    assert not (tmp_path / "out").exists()
    result = invoke("data", "synth", tmp_path / "cli", "--images-per-domain", 2, "--size", 64,
                    "--extra-domain", "evening_stormy")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rendered 12 images in" in result.stdout and "evening_stormy" in result.stdout
