"""The `clipgap` application through Typer's runner: real commands, one-line errors."""

import json
import subprocess
import sys

import pytest
from helpers import assert_one_line_error
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.rundir import MANIFEST, OFFSETS, TEXT_EMBEDDINGS, Run
from clipgap_cli.versions import stack_versions

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_names_the_stack():
    result = invoke("--version")
    assert result.exit_code == 0
    versions = stack_versions()
    assert result.stdout.startswith(f"clipgap {versions['clipgap']} (torch {versions['torch']}, ")
    assert f"mmcv {versions['mmcv']}" in result.stdout and "open_clip" in result.stdout


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "clipgap_cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "runs" in proc.stdout and "--version" in proc.stdout


def test_runs_show_lists_and_verifies_artifacts(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, lambda p: p.write_bytes(b"x" * 2048), stage="encode-prompts", options={})
    run.write(
        OFFSETS, lambda p: p.write_bytes(b"a"), stage="optimize-augs", options={}, inputs=[TEXT_EMBEDDINGS]
    )
    result = runner.invoke(app, ["runs", "show", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if TEXT_EMBEDDINGS in line or OFFSETS in line]
    assert len(rows) == 2
    text_row = next(r for r in rows if TEXT_EMBEDDINGS in r)
    assert "encode-prompts" in text_row and "2.0 KiB" in text_row and "ok" in text_row
    assert run.artifact(TEXT_EMBEDDINGS).sha256[:12] in text_row

    run.path(OFFSETS).write_bytes(b"b")
    result = runner.invoke(app, ["runs", "show", str(tmp_path)], env={"COLUMNS": "200"})
    assert "modified" in result.stdout
    assert_one_line_error(result, "1 of 2 artifacts", "failed verification")


def test_runs_show_empty_run(tmp_path):
    Run.create(tmp_path)
    result = invoke("runs", "show", tmp_path)
    assert result.exit_code == 0 and "no artifacts yet" in result.stdout


def test_runs_show_missing_run_directory(tmp_path):
    assert_one_line_error(invoke("runs", "show", tmp_path / "absent"), "does not exist")


def test_runs_show_directory_without_manifest(tmp_path):
    assert_one_line_error(invoke("runs", "show", tmp_path), "not a clipgap run directory")


def test_runs_show_corrupt_manifest(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1, "artifacts": {"a": {"sha256": 1}}})[:-3])
    assert_one_line_error(invoke("runs", "show", tmp_path), "manifest.json is corrupt")


def commands():
    import typer.main

    def walk(cmd):
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)

    return walk(typer.main.get_command(app))


def test_every_option_has_help():
    for cmd in commands():
        assert cmd.help, f"{cmd.name} has no help"
        for param in cmd.params:
            if param.param_type_name == "option":
                assert param.help, f"{cmd.name} {param.name} has no help"


def test_every_numeric_option_is_range_checked_as_it_is_parsed():
    numeric = [
        (cmd.name, p.name, p)
        for cmd in commands()
        for p in cmd.params
        if p.type_descriptor.annotation in (int, float)
    ]
    assert len(numeric) > 20
    for cmd, name, param in numeric:
        assert param.callback is not None, f"{cmd} --{name} is not range-checked"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimize-augs", "--lr", "nan"], "--lr nan is out of range; give a finite value > 0"),
        (["optimize-augs", "--lr", "-0.1"], "--lr -0.1 is out of range"),
        (["optimize-augs", "--lr", "inf"], "--lr inf is out of range"),
        (["optimize-augs", "--iters", "0"], "--iters 0 is out of range; give an integer >= 1"),
        (["optimize-augs", "--crops-per-iter", "-3"], "--crops-per-iter -3 is out of range"),
        (["optimize-augs", "--crop-size", "0"], "--crop-size 0 is out of range"),
        (["optimize-augs", "--seed", "-1"], "--seed -1 is out of range; give an integer in 0..4294967295"),
        (["train", "--gpus", "0"], "--gpus 0 is out of range"),
        (["train", "--nnodes", "0"], "--nnodes 0 is out of range"),
        (["train", "--node-rank", "-1"], "--node-rank -1 is out of range; give an integer >= 0"),
        (
            ["train", "--master-port", "70000"],
            "--master-port 70000 is out of range; give an integer in 1..65535",
        ),
        (["train", "--max-iters", "0"], "--max-iters 0 is out of range"),
        (["train", "--seed", str(2**32)], f"--seed {2**32} is out of range"),
        (["predict", "--score-thr", "1.5"], "--score-thr 1.5 is out of range; give a value in [0, 1]"),
        (["predict", "--score-thr", "nan"], "--score-thr nan is out of range"),
        (["clip", "pretrain", "--lr", "inf"], "--lr inf is out of range"),
        (["clip", "pretrain", "--steps", "0"], "--steps 0 is out of range"),
        (["clip", "pretrain", "--batch-size", "1"], "--batch-size 1 is out of range; give an integer >= 2"),
        (["clip", "pretrain", "--crops-per-image", "-1"], "--crops-per-image -1 is out of range"),
        (["clip", "zero-shot", "--scenes", "0"], "--scenes 0 is out of range"),
        (["data", "synth", "--images-per-domain", "1"], "--images-per-domain 1 is out of range"),
    ],
)
def test_out_of_range_numbers_are_refused_in_one_line(tmp_path, args, message):
    required = {
        "optimize-augs": ["--run", tmp_path / "run", "--data", tmp_path / "data"],
        "train": ["--run", tmp_path / "run", "--data", tmp_path / "data"],
        "predict": [tmp_path / "model", tmp_path / "image.jpg", "--out", tmp_path / "out"],
        "pretrain": ["--out", tmp_path / "clip.pt"],
        "zero-shot": [],
        "synth": [tmp_path / "synth"],
    }
    assert_one_line_error(invoke(*args, *required[args[-3]]), message)
    assert list(tmp_path.iterdir()) == []
