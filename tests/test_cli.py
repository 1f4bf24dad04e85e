"""The `clipgap` application through Typer's runner: real commands, one-line errors."""

import json
import subprocess
import sys

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


def test_every_option_has_help():
    import typer.main

    command = typer.main.get_command(app)

    def walk(cmd):
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)

    for cmd in walk(command):
        assert cmd.help, f"{cmd.name} has no help"
        for param in cmd.params:
            if param.param_type_name == "option":
                assert param.help, f"{cmd.name} {param.name} has no help"
