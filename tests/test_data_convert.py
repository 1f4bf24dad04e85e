"""`clipgap data convert`: VOC-XML trees to COCO json, never writing into the source tree."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_one_line_error
from PIL import Image
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.data import convert as C
from clipgap_cli.data.convert import convert_voc
from clipgap_cli.data.spec import SPEC_NAME, load_run_dataset, load_spec
from clipgap_cli.errors import ClipgapError
from clipgap_cli.stages.encode_prompts import parse_class_names

FIXTURE = Path(__file__).parent / "fixtures" / "voc_small"
DWD = ["bus", "bike", "car", "motor", "person", "rider", "truck"]
CATEGORIES = [{"id": i + 1, "name": name} for i, name in enumerate(DWD)]


def _ann(id, image_id, category_id, bbox, area, iscrowd=0):
    return dict(id=id, image_id=image_id, category_id=category_id, bbox=bbox, area=area, iscrowd=iscrowd)


# Written by hand from the XML files of tests/fixtures/voc_small. A VOC box names its first
# and last pixel, 1-based: (xmin, ymin, xmax, ymax) -> [xmin-1, ymin-1, xmax-xmin+1, ymax-ymin+1].
EXPECTED = {
    "daytime_clear_train": {
        # img3 is listed but has no image file: left out.
        "images": [
            {"id": 1, "file_name": "img1.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "img2.jpg", "width": 40, "height": 30},
        ],
        "annotations": [
            _ann(1, 1, 3, [0, 0, 10, 8], 80),  # img1 car (1, 1, 10, 8): the top-left pixel
            _ann(2, 1, 5, [4, 4, 10, 20], 200, iscrowd=1),  # img1 person (5, 5, 14, 24), difficult
            _ann(
                3, 1, 1, [20, 2, 20, 28], 560
            ),  # img1 " Bus " (21, 3, 40, 30): to the right and bottom edges
            # img2: dog (unknown class), car (10, 10, 5, 20) (degenerate), motor (45, 5, 50, 10)
            # (outside the 40x30 image) are left out; truck (0, 10, 45, 30) is clipped to the image.
            _ann(4, 2, 7, [0, 9, 40, 21], 840),
            _ann(5, 2, 2, [2.5, 1, 6, 5], 30),  # img2 bike (3.5, 2, 8.5, 6): fractions stay fractions
        ],
        "categories": CATEGORIES,
    },
    "daytime_clear_test": {
        # img4 has only a .png, which the XML's <filename> names too.
        "images": [{"id": 1, "file_name": "img4.png", "width": 40, "height": 30}],
        "annotations": [_ann(1, 1, 6, [19, 9, 11, 21], 231)],  # rider (20, 10, 30, 30)
        "categories": CATEGORIES,
    },
    "night_rainy_train": {
        # n1's XML claims 41x30; the image is 40x30, and the image wins.
        "images": [{"id": 1, "file_name": "n1.jpg", "width": 40, "height": 30}],
        "annotations": [
            _ann(1, 1, 2, [0, 0, 40, 30], 1200),  # bike (1, 1, 40, 30): the whole image
            _ann(2, 1, 4, [10, 10, 10, 10], 100),  # motor (11, 11, 20, 20)
        ],
        "categories": CATEGORIES,
    },
}


def _tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file, and "dir" for every directory."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _annotations(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "annotations").glob("*.json"))}


def test_fixture_converts_to_the_expected_coco_json(tmp_path):
    report = convert_voc(FIXTURE, tmp_path / "out")
    assert _annotations(tmp_path / "out") == EXPECTED
    assert report.class_set == "dwd"
    counts = {issue.reason: issue.count for issue in report.issues.values()}
    assert counts == {
        C.UNKNOWN_CLASS: 1,
        C.DEGENERATE_BOX: 1,
        C.OUTSIDE_BOX: 1,
        C.CLIPPED_BOX: 1,
        C.MISSING_IMAGE: 1,
        C.SIZE_MISMATCH: 1,
    }
    assert report.issues[C.UNKNOWN_CLASS].example == "daytime_clear/VOC2007/Annotations/img2.xml: 'dog'"
    summary = {(s.domain, s.split): (s.images, s.objects, s.ignored) for s in report.splits}
    assert summary == {
        ("daytime_clear", "train"): (2, 5, 1),
        ("daytime_clear", "test"): (1, 1, 0),
        ("night_rainy", "train"): (1, 2, 0),
    }


def test_spec_points_at_the_source_images_and_follows_the_protocol(tmp_path):
    convert_voc(FIXTURE, tmp_path)
    raw = json.loads((tmp_path / SPEC_NAME).read_text())
    day = raw["domains"][0]
    assert day["splits"]["train"] == {
        "image_dir": str((FIXTURE / "daytime_clear" / "VOC2007" / "JPEGImages").resolve()),
        "ann_file": "annotations/daytime_clear_train.json",
    }
    spec = load_spec(tmp_path)
    assert spec.classes == tuple(DWD)
    assert [(d.name, d.role) for d in spec.domains] == [
        ("daytime_clear", "source"),
        ("night_rainy", "target"),
    ]
    assert spec.train_split.name == "train" and spec.eval_split("daytime_clear").name == "test"
    assert spec.eval_split("night_rainy").name == "train"  # targets are scored on their train lists


def test_converting_twice_gives_identical_files_and_leaves_the_source_untouched(tmp_path):
    before = _tree_hashes(FIXTURE)
    convert_voc(FIXTURE, tmp_path / "a")
    first = _tree_hashes(tmp_path / "a")
    convert_voc(FIXTURE, tmp_path / "a")
    convert_voc(FIXTURE, tmp_path / "b")
    assert _tree_hashes(tmp_path / "a") == first == _tree_hashes(tmp_path / "b")
    assert _tree_hashes(FIXTURE) == before


@pytest.fixture
def tree(tmp_path):
    """A writable copy of the fixture tree."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "tree"))


def test_malformed_xml_and_unreadable_images_are_counted_not_fatal(tree, tmp_path):
    day = tree / "daytime_clear" / "VOC2007"
    (day / "Annotations" / "img1.xml").write_text("<annotation><object><name>car</name>")
    (day / "JPEGImages" / "img2.jpg").write_bytes(b"not a jpeg")
    (day / "Annotations" / "img4.xml").unlink()
    report = convert_voc(tree, tmp_path / "out")
    counts = {issue.reason: issue.count for issue in report.issues.values()}
    assert counts[C.MALFORMED_XML] == 1 and counts[C.UNREADABLE_IMAGE] == 1 and counts[C.MISSING_XML] == 1
    assert report.issues[C.MALFORMED_XML].example.startswith("daytime_clear/VOC2007/Annotations/img1.xml: ")
    assert _annotations(tmp_path / "out")["daytime_clear_train"]["images"] == []


def test_a_listed_id_is_converted_once(tree, tmp_path):
    (tree / "night_rainy" / "VOC2007" / "ImageSets" / "Main" / "train.txt").write_text("n1\nn1\n")
    report = convert_voc(tree, tmp_path / "out")
    assert report.issues[C.DUPLICATE_ID].count == 1
    assert len(_annotations(tmp_path / "out")["night_rainy_train"]["images"]) == 1


UNUSABLE = [
    ("night_rainy/VOC2007/Annotations", "night_rainy/VOC2007 has no Annotations directory"),
    ("night_rainy/VOC2007/JPEGImages", "night_rainy/VOC2007 has no JPEGImages directory"),
    ("night_rainy/VOC2007/ImageSets", "night_rainy/VOC2007 has no ImageSets/Main directory"),
    ("night_rainy/VOC2007/ImageSets/Main/train.txt", "night_rainy/VOC2007 has no split list"),
    (
        "daytime_clear/VOC2007/ImageSets/Main/test.txt",
        "the source domain 'daytime_clear' needs a test or val list",
    ),
]


@pytest.mark.parametrize("remove, message", UNUSABLE)
def test_unusable_trees_fail_with_one_clear_error(tree, tmp_path, remove, message):
    path = tree / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ClipgapError, match=message):
        convert_voc(tree, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_one_diverse_weather_domain_converts_on_its_own(tree, tmp_path):
    report = convert_voc(tree / "daytime_clear", tmp_path / "out")
    assert report.class_set == "dwd" and [d.name for d in report.spec.domains] == ["daytime_clear"]
    assert _annotations(tmp_path / "out") == {k: v for k, v in EXPECTED.items() if k.startswith("daytime")}


def test_bad_arguments_fail_with_one_clear_error(tree, tmp_path):
    with pytest.raises(ClipgapError, match="is not a directory"):
        convert_voc(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipgapError, match="found no VOC-style dataset"):
        convert_voc(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ClipgapError, match="is inside the source tree"):
        convert_voc(tree, tree / "coco")
    with pytest.raises(ClipgapError, match="--source 'night' is not a domain of this tree"):
        convert_voc(tree, tmp_path / "out", source="night")
    with pytest.raises(ClipgapError, match="--classes 'car,car' is not a class set"):
        convert_voc(tree, tmp_path / "out", classes="car,car")
    assert not (tree / "coco").exists() and not (tmp_path / "out").exists()


def test_custom_classes_and_source(tree, tmp_path):
    (tree / "night_rainy" / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("n1\n")
    report = convert_voc(tree, tmp_path / "out", classes="Motor, bike", source="night_rainy")
    assert report.spec.classes == ("Motor", "bike") and report.spec.source.name == "night_rainy"
    coco = _annotations(tmp_path / "out")["night_rainy_train"]
    assert [(a["category_id"], a["bbox"]) for a in coco["annotations"]] == [
        (2, [0, 0, 40, 30]),
        (1, [10, 10, 10, 10]),
    ]


def _voc(root: Path, lists: dict[str, dict[str, list[tuple[str, tuple]]]]) -> None:
    """A VOC directory: split -> {image id: [(class, (xmin, ymin, xmax, ymax))]}, 20x10 images."""
    for part in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / part).mkdir(parents=True, exist_ok=True)
    for split, images in lists.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
        for image_id, objects in images.items():
            Image.new("RGB", (20, 10)).save(root / "JPEGImages" / f"{image_id}.jpg")
            boxes = "".join(
                f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                for name, b in objects
            )
            (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{boxes}</annotation>")


def test_pascal_voc_years_merge_and_art_domains_are_scored_on_test(tmp_path):
    devkit = tmp_path / "data" / "VOCdevkit"
    _voc(
        devkit / "VOC2007",
        {"trainval": {"a": [("dog", (1, 1, 5, 5))]}, "test": {"b": [("cat", (2, 2, 4, 4))]}},
    )
    _voc(devkit / "VOC2012", {"trainval": {"c": [("horse", (1, 1, 2, 2)), ("car", (1, 1, 20, 10))]}})
    _voc(tmp_path / "data" / "watercolor", {"train": {"w": []}, "test": {"x": [("bird", (3, 3, 6, 6))]}})
    report = convert_voc(tmp_path / "data", tmp_path / "out")
    assert report.class_set == "voc-art"  # Watercolor present: the 6 classes VOC and the art sets share
    spec = report.spec
    assert spec.classes == ("bicycle", "bird", "car", "cat", "dog", "person")
    assert [(d.name, d.role) for d in spec.domains] == [("voc", "source"), ("watercolor", "target")]
    assert (spec.train_split.name, spec.eval_split("voc").name, spec.eval_split("watercolor").name) == (
        "trainval",
        "test",
        "test",
    )
    # The same list of several years is one split; file names say which year.
    trainval = _annotations(tmp_path / "out")["voc_trainval"]
    assert [i["file_name"] for i in trainval["images"]] == [
        "VOC2007/JPEGImages/a.jpg",
        "VOC2012/JPEGImages/c.jpg",
    ]
    assert spec.train_split.image_dir == devkit.resolve()
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in trainval["annotations"]] == [
        (1, 5, [0, 0, 5, 5]),
        (2, 3, [0, 0, 20, 10]),
    ]
    assert report.issues[C.UNKNOWN_CLASS].count == 1  # the horse
    assert (
        spec.eval_split("watercolor").image_dir == (tmp_path / "data" / "watercolor" / "JPEGImages").resolve()
    )


def test_difficult_objects_are_ignored_instances_in_mmdetection(tmp_path):
    from mmdet.datasets import CocoDataset

    spec = convert_voc(FIXTURE, tmp_path).spec
    split = spec.train_split
    dataset = CocoDataset(
        ann_file=str(split.ann_file),
        data_prefix=dict(img=str(split.image_dir)),
        metainfo=dict(classes=spec.classes),
        test_mode=True,
        pipeline=[],
    )
    instances = dataset.get_data_info(0)["instances"]
    assert [(i["bbox_label"], i["bbox"], i["ignore_flag"]) for i in instances] == [
        (2, [0, 0, 10, 8], 0),
        (4, [4, 4, 14, 24], 1),  # the difficult person
        (0, [20, 2, 40, 30], 0),
    ]
    assert dataset.get_data_info(0)["img_path"] == str(split.image_dir / "img1.jpg")


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_converts_and_reports_what_it_left_out(tmp_path):
    result = invoke("data", "convert", FIXTURE, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    for text in ("daytime_clear", "night_rainy", C.UNKNOWN_CLASS, C.OUTSIDE_BOX, C.MISSING_IMAGE, SPEC_NAME):
        assert text in " ".join(result.stdout.split())
    assert load_spec(tmp_path / "out").source.name == "daytime_clear"


def test_cli_missing_annotations_directory_is_one_line(tree, tmp_path):
    shutil.rmtree(tree / "daytime_clear" / "VOC2007" / "Annotations")
    result = invoke("data", "convert", tree, "--out", tmp_path / "out")
    assert_one_line_error(result, "daytime_clear/VOC2007 has no Annotations directory")


def test_cli_bad_root_and_out_are_one_line(tree, tmp_path):
    assert_one_line_error(
        invoke("data", "convert", tmp_path / "nope", "--out", tmp_path / "o"), "is not a directory"
    )
    assert_one_line_error(invoke("data", "convert", tree, "--out", tree / "o"), "inside the source tree")
    result = invoke("data", "convert", tree)
    assert result.exit_code != 0 and "--out" in result.output and "Traceback" not in result.output


def test_the_classes_convert_writes_are_those_encode_prompts_reads(tree, tmp_path):
    # The same --classes to both commands: train then finds the dataset's classes are the run's.
    convert_voc(tree, tmp_path / "out", classes="Motor, bike")
    assert load_run_dataset(tmp_path / "out", parse_class_names("Motor, bike")).classes == ("Motor", "bike")
    with pytest.raises(ClipgapError, match="--classes 'Car,car' is not a class set"):
        convert_voc(tree, tmp_path / "other", classes="Car,car")  # VOC XML cannot tell them apart
