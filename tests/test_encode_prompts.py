"""`clipgap encode-prompts`: the text embeddings artifact, no-op re-runs, and bad inputs."""

import json

import pytest
import torch
from helpers import assert_one_line_error
from typer.testing import CliRunner

from clipgap_cli.artifacts import load_text_embeddings
from clipgap_cli.cli import app
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.prompts import encode_texts, read_prompts, tokenize
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import MANIFEST, RUN_LOCK, TEXT_EMBEDDINGS, Run

runner = CliRunner()
TINY = ["--clip", "RN-tiny"]

# The reference code's prunedprompts2.txt, in its order (domain index j = 0..14).
REFERENCE_PROMPTS = [
    f"an image taken on a {weather} {time}"
    for time in ("night", "day", "evening")
    for weather in ("snow", "fog", "cloudy", "rain", "stormy")
]
DWD_CLASSES = ["bus", "bike", "car", "motor", "person", "rider", "truck"]


def invoke(*args):
    return runner.invoke(app, ["encode-prompts", *[str(a) for a in args]])


def encode(run, *args):
    result = invoke("--run", run, *TINY, *args)
    assert result.exit_code == 0, result.output
    return result


def test_default_prompts_make_the_artifact(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["encode-prompts", "--default-prompts", *TINY, "--run", str(run)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    for fragment in (
        "RN-tiny (random weights)",
        "target prompts │ 15",
        "7 (bus, bike,",
        "embedding dim  │ 64",
    ):
        assert fragment in result.stdout
    assert str(run / TEXT_EMBEDDINGS) in result.stdout

    data = torch.load(run / TEXT_EMBEDDINGS, weights_only=True)
    assert data["source"].shape == (64,)
    assert data["targets"].shape == (15, 64) and data["classes"].shape == (7, 64)
    for key in ("source", "targets", "classes"):
        assert data[key].dtype == torch.float32
        torch.testing.assert_close(data[key].norm(dim=-1), torch.ones(data[key].shape[:-1]))
    assert data["source_prompt"] == "an image taken during the day"
    assert data["target_prompts"] == REFERENCE_PROMPTS
    assert data["class_names"] == DWD_CLASSES
    assert data["class_template"] == "a photo of a {}"
    assert data["class_prompts"] == [f"a photo of a {c}" for c in DWD_CLASSES]
    identity = {"model": "RN-tiny", "pretrained": None, "sha256": None}
    assert data["clip"] == identity

    artifact = Run.open(run).verified(TEXT_EMBEDDINGS)
    assert artifact.stage == "encode-prompts" and artifact.clip == identity
    assert artifact.options["target_prompts"] == REFERENCE_PROMPTS
    assert artifact.options["clip"] == "RN-tiny" and artifact.options["pretrained"] is None


def test_the_embeddings_are_clips_text_embeddings_of_the_strings(tmp_path):
    encode(tmp_path, "--default-prompts", "--classes", "car, person")
    emb = load_text_embeddings(tmp_path)
    assert emb.class_prompts == ["a photo of a car", "a photo of a person"]
    texts = [emb.source_prompt, *emb.target_prompts, *emb.class_prompts]
    expected = encode_texts(load_clip("RN-tiny", None), tokenize("RN-tiny", texts))
    torch.testing.assert_close(torch.cat([emb.source[None], emb.targets, emb.classes]), expected)
    # Distinct prompts give distinct embeddings: the tokens reached the text encoder.
    assert not torch.allclose(emb.targets[0], emb.targets[1])


def test_prompts_file_format(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(
        "\ufeff# art styles\r\n\r\n  an image in the comics style  \r\n#   another comment\r\n"
        "an image in the watercolor painting style\n   \n".encode()
    )
    assert read_prompts(prompts) == [
        "an image in the comics style",
        "an image in the watercolor painting style",
    ]
    encode(
        tmp_path / "run", prompts, "--source-prompt", "a realistic image", "--class-template", "a {} in art"
    )
    emb = load_text_embeddings(tmp_path / "run")
    assert emb.target_prompts == read_prompts(prompts) and emb.targets.shape == (2, 64)
    assert emb.source_prompt == "a realistic image"
    assert emb.class_prompts[0] == "a bus in art"


def test_classes_from_a_coco_json_in_id_order(tmp_path):
    coco = tmp_path / "train.json"
    categories = [{"id": 3, "name": "dog"}, {"id": 1, "name": "bird"}, {"id": 2, "name": "cat"}]
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    encode(tmp_path / "run", "--default-prompts", "--classes-from", coco)
    emb = load_text_embeddings(tmp_path / "run")
    assert emb.class_names == ["bird", "cat", "dog"] and emb.classes.shape == (3, 64)


def test_rerun_with_the_same_inputs_is_a_no_op(tmp_path):
    encode(tmp_path, "--default-prompts")
    manifest = (tmp_path / MANIFEST).read_bytes()
    stat = (tmp_path / TEXT_EMBEDDINGS).stat()

    result = encode(tmp_path, "--default-prompts", "--pretrained", "none")
    assert "nothing changed" in result.stdout
    assert (tmp_path / MANIFEST).read_bytes() == manifest
    assert (tmp_path / TEXT_EMBEDDINGS).stat().st_mtime_ns == stat.st_mtime_ns

    result = encode(tmp_path, "--default-prompts", "--force")
    assert "nothing changed" not in result.stdout
    assert (tmp_path / TEXT_EMBEDDINGS).stat().st_mtime_ns != stat.st_mtime_ns


def test_changed_inputs_are_encoded_again(tmp_path):
    encode(tmp_path, "--default-prompts")
    result = encode(tmp_path, "--default-prompts", "--classes", "car")
    assert "nothing changed" not in result.stdout
    assert load_text_embeddings(tmp_path).class_names == ["car"]

    weights = tmp_path / "weights" / "tiny.pt"
    weights.parent.mkdir()
    torch.save(load_clip("RN-tiny", None).state_dict(), weights)
    result = encode(tmp_path, "--default-prompts", "--classes", "car", "--pretrained", weights)
    assert "nothing changed" not in result.stdout, "another CLIP identity (a file) is another model"
    assert Run.open(tmp_path).artifact(TEXT_EMBEDDINGS).clip["sha256"] is not None


def test_a_modified_artifact_is_refused(tmp_path):
    encode(tmp_path, "--default-prompts")
    torch.save({"format": 1}, tmp_path / TEXT_EMBEDDINGS)
    with pytest.raises(ClipgapError, match="does not match the sha256 in the manifest"):
        load_text_embeddings(tmp_path)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Each: (files to write under tmp_path, arguments, fragments of the one error line).
BAD_INPUTS = {
    "missing file": ({}, ["absent.txt"], ["prompts file", "absent.txt does not exist"]),
    "only comments": ({"p.txt": b"# nothing\n\n   \n"}, ["p.txt"], ["p.txt has no prompts"]),
    "not utf-8": ({"p.txt": b"a fog night\nan image \xff\xfe\n"}, ["p.txt"], ["p.txt line 2 is not UTF-8"]),
    "duplicate": ({"p.txt": b"a\nb\n a \n"}, ["p.txt"], ["line 3 repeats the prompt 'a' of line 1"]),
    "no prompts given": ({}, [], ["either a PROMPTS_FILE or --default-prompts"]),
    "both prompt sources": ({"p.txt": b"a\n"}, ["p.txt", "--default-prompts"], ["(exactly one)"]),
    "target is the source": (
        {"p.txt": b"an image taken during the day\n"},
        ["p.txt"],
        ["'an image taken during the day' is the source prompt"],
    ),
    "unknown model": ({}, ["--default-prompts", "--clip", "RN999"], ["unknown CLIP model 'RN999'"]),
    "vit": ({}, ["--default-prompts", "--clip", "ViT-B-32"], ["'ViT-B-32' is not a ResNet"]),
    "text as weights": (
        {"w.pt": b"not a checkpoint\n"},
        ["--default-prompts", "--pretrained", "w.pt"],
        ["w.pt is not a CLIP checkpoint"],
    ),
    "weights not offline": (
        {},
        ["--default-prompts", "--clip", "RN50"],
        ["'openai' weights of CLIP RN50", "--pretrained /path/to/RN50.pt"],
    ),
    "unknown tag": ({}, ["--default-prompts", "--pretrained", "openai"], ["neither a pretrained tag"]),
    "both class sources": (
        {"c.json": b"{}"},
        ["--default-prompts", "--classes", "a", "--classes-from", "c.json"],
        ["--classes or --classes-from, not both"],
    ),
    "coco without categories": (
        {"c.json": b'{"images": []}'},
        ["--default-prompts", "--classes-from", "c.json"],
        ["c.json has no 'categories' list"],
    ),
    "duplicate class": ({}, ["--default-prompts", "--classes", "car,bus,car"], ["names car more than once"]),
    "empty class": ({}, ["--default-prompts", "--classes", "car,,bus"], ["has an empty class name"]),
    "template without {}": ({}, ["--default-prompts", "--class-template", "a photo"], ["exactly once"]),
    "too long": ({"p.txt": b"fog " * 80 + b"\n"}, ["p.txt"], ["tokens long", "at most 77"]),
}


def run_bad(tmp_path, files, args, run):
    for name, data in files.items():
        write(tmp_path / name, data)
    clip = [] if "--clip" in args else TINY
    args = [tmp_path / a if a.endswith((".txt", ".pt", ".json")) else a for a in args]  # file names
    return invoke("--run", run, *clip, *args)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, case):
    files, args, fragments = BAD_INPUTS[case]
    run = tmp_path / "run"
    assert_one_line_error(run_bad(tmp_path, files, args, run), *fragments)
    assert not run.exists()


def test_bad_inputs_leave_an_existing_run_unchanged(tmp_path):
    run = tmp_path / "run"
    encode(run, "--default-prompts")
    manifest = (run / MANIFEST).read_bytes()
    embeddings = (run / TEXT_EMBEDDINGS).read_bytes()
    for case in ("only comments", "text as weights", "weights not offline", "duplicate class"):
        files, args, fragments = BAD_INPUTS[case]
        assert_one_line_error(run_bad(tmp_path, files, args, run), *fragments)
    assert (run / MANIFEST).read_bytes() == manifest
    assert (run / TEXT_EMBEDDINGS).read_bytes() == embeddings
    assert sorted(p.name for p in run.iterdir()) == sorted([".manifest.lock", RUN_LOCK, MANIFEST, "prompts"])
