"""The dataset spec: what every stage reads, and the clear errors for a bad hand-written one."""

import copy
import json

import pytest

from clipgap_cli.data.spec import SPEC_NAME, DataSpec, load_spec, write_spec
from clipgap_cli.errors import ClipgapError


def _write_spec(root, data):
    path = root / SPEC_NAME
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _valid(root):
    """A valid spec for files made under `root`: a source with train/test, two targets."""
    for name in ("day", "night", "fog"):
        (root / "images" / name).mkdir(parents=True)
    (root / "ann").mkdir()
    for name in ("day_train", "day_test", "night_train", "night_test", "fog_train"):
        (root / "ann" / f"{name}.json").write_text("{}")

    def split(domain, name):
        return {"image_dir": f"images/{domain}", "ann_file": f"ann/{domain}_{name}.json"}

    return {
        "classes": ["car", "person"],
        "domains": [
            {
                "name": "day",
                "role": "source",
                "splits": {"train": split("day", "train"), "test": split("day", "test")},
            },
            {
                "name": "night",
                "role": "target",
                "splits": {"train": split("night", "train"), "test": split("night", "test")},
            },
            {"name": "fog", "role": "target", "splits": {"train": split("fog", "train")}},
        ],
    }


def test_loads_with_the_published_protocol_and_absolute_paths(tmp_path, monkeypatch):
    _write_spec(tmp_path, _valid(tmp_path))
    monkeypatch.chdir(tmp_path / "images")  # paths resolve against the spec's directory, not the cwd
    spec = load_spec(tmp_path)
    assert spec.path == (tmp_path / SPEC_NAME).resolve()
    assert spec.classes == ("car", "person")
    assert [d.name for d in spec.domains] == ["day", "night", "fog"]
    assert spec.source.name == "day" and [d.name for d in spec.targets] == ["night", "fog"]
    # The source is scored on its test split and trains on train; targets are scored on train.
    assert spec.eval_split("day").ann_file == tmp_path.resolve() / "ann" / "day_test.json"
    assert spec.eval_split("night").ann_file == tmp_path.resolve() / "ann" / "night_train.json"
    assert spec.eval_split("fog").name == "train"
    assert spec.train_split.ann_file == tmp_path.resolve() / "ann" / "day_train.json"
    assert spec.train_split.image_dir == tmp_path.resolve() / "images" / "day"
    assert spec.domain("night").train_split is None
    assert all(
        s.image_dir.is_absolute() and s.ann_file.is_absolute()
        for d in spec.domains
        for s in d.splits.values()
    )


def test_the_spec_file_itself_can_be_named(tmp_path):
    path = _write_spec(tmp_path, _valid(tmp_path))
    assert load_spec(path) == load_spec(tmp_path)


def test_explicit_splits_override_the_protocol(tmp_path):
    data = _valid(tmp_path)
    data["domains"][0]["train_split"] = "test"
    data["domains"][0]["eval_split"] = "train"
    data["domains"][1]["eval_split"] = "test"
    _write_spec(tmp_path, data)
    spec = load_spec(tmp_path)
    assert spec.train_split.name == "test" and spec.eval_split("day").name == "train"
    assert spec.eval_split("night").name == "test"


def test_unknown_domain_names_the_known_ones(tmp_path):
    _write_spec(tmp_path, _valid(tmp_path))
    with pytest.raises(ClipgapError, match="has no domain 'rain'; choose one of: day, night, fog"):
        load_spec(tmp_path).eval_split("rain")


def test_write_spec_round_trips_with_relative_paths_inside(tmp_path):
    _write_spec(tmp_path, _valid(tmp_path))
    spec = load_spec(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    moved = DataSpec(path=outside / SPEC_NAME, classes=spec.classes, domains=spec.domains)
    write_spec(moved)
    text = json.loads((outside / SPEC_NAME).read_text())
    # Outside the spec's directory: absolute. Inside it: relative, so the directory can move.
    assert text["domains"][0]["splits"]["train"]["image_dir"] == str((tmp_path / "images" / "day").resolve())
    write_spec(spec)
    text = json.loads((tmp_path / SPEC_NAME).read_text())
    assert text["domains"][0]["splits"]["train"] == {
        "image_dir": "images/day",
        "ann_file": "ann/day_train.json",
    }
    assert load_spec(tmp_path) == spec
    assert (load_spec(outside).classes, load_spec(outside).domains) == (spec.classes, spec.domains)


def _drop(key):
    return lambda d: d.pop(key)


def _set(path, value):
    def apply(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        d[last] = value

    return apply


NIGHT, NIGHT_TRAIN = ["domains", 1], ["domains", 1, "splits", "train"]
BAD_SPECS = [
    (_drop("classes"), 'missing the key "classes"'),
    (_drop("domains"), 'missing the key "domains"'),
    (_set(["clases"], ["car"]), 'unknown key "clases"'),
    (_set(["format"], 2), "unknown format 2"),
    (_set(["classes"], []), '"classes" must be a non-empty list'),
    (_set(["classes"], "car,person"), '"classes" must be a non-empty list'),
    (_set(["classes"], ["car", 3]), 'every entry of "classes" must be a non-empty string'),
    (_set(["classes"], ["car", "person", "car"]), '"classes" lists car more than once'),
    (_set(["domains"], {}), '"domains" must be a non-empty list'),
    (_set([*NIGHT, "role"], "teacher"), "domain 'night' has role 'teacher'; use \"source\" or \"target\""),
    (_set([*NIGHT, "role"], "source"), 'exactly one domain must have role "source" (found: day, night)'),
    (_set(["domains", 0, "role"], "target"), 'exactly one domain must have role "source" (found: none)'),
    (_set(["domains", 1, "name"], "day"), "domain 'day' is listed more than once"),
    (_set(["domains", 1, "name"], "night rain"), "bad name 'night rain'"),
    (_set(["domains", 1, "splits"], {}), '"splits" must be a non-empty object'),
    (_set([*NIGHT_TRAIN, "ann_file"], "ann/missing.json"), "missing.json of domain 'night'"),
    (_set([*NIGHT_TRAIN, "image_dir"], "images/missing"), "images/missing of domain 'night'"),
    (_set([*NIGHT_TRAIN, "image_dir"], ""), "paths must be non-empty strings"),
    (_set([*NIGHT_TRAIN, "images"], "x"), 'unknown key "images"'),
    (_set(["domains", 2, "eval_split"], "test"), "domain 'fog' has no split 'test' for its eval_split"),
    (_set(["domains", 1, "train_split"], "train"), "only the source domain takes \"train_split\""),
    (_set(["domains", 0, "splits"], {"test": {"image_dir": "images/day", "ann_file": "ann/day_test.json"}}),
     "domain 'day' has no split 'train' for its train_split"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, message", BAD_SPECS)
def test_bad_specs_fail_with_one_clear_sentence(tmp_path, mutate, message):
    data = copy.deepcopy(_valid(tmp_path))
    mutate(data)
    _write_spec(tmp_path, data)
    with pytest.raises(ClipgapError) as err:
        load_spec(tmp_path)
    assert message in str(err.value)
    assert str(err.value).startswith(f"dataset spec {(tmp_path / SPEC_NAME).resolve()}: ")
    assert "\n" not in str(err.value)


def test_missing_and_malformed_spec_files(tmp_path):
    with pytest.raises(ClipgapError, match="no dataset spec at .*clipgap data convert"):
        load_spec(tmp_path)
    _write_spec(tmp_path, '{"classes": ["car"],')
    with pytest.raises(ClipgapError, match="is not valid JSON"):
        load_spec(tmp_path)
    _write_spec(tmp_path, "[1, 2]")
    with pytest.raises(ClipgapError, match="top level must be a JSON object"):
        load_spec(tmp_path)
