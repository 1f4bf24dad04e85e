"""The run directory: atomic writes, verified reads, CLIP consistency, the no-op check, the run lock."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import assert_one_line_error, lock_held
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import sha256_of
from clipgap_cli.rundir import MANIFEST, OFFSETS, RUN_LOCK, TEXT_EMBEDDINGS, Run

RN101 = {"model": "RN101", "pretrained": "openai", "sha256": None}
RN50 = {"model": "RN50", "pretrained": "openai", "sha256": None}


def write_bytes(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


def test_write_records_everything_the_manifest_promises(tmp_path):
    run = Run.create(tmp_path / "run")
    text = run.write(
        TEXT_EMBEDDINGS,
        write_bytes(b"embeddings"),
        stage="encode-prompts",
        options={"clip": "RN101", "prompts": ("a", "b"), "file": Path("p.txt")},
        clip=RN101,
    )
    offsets = run.write(
        OFFSETS,
        write_bytes(b"offsets"),
        stage="optimize-augs",
        options={"iters": 3},
        inputs=[TEXT_EMBEDDINGS],
    )

    manifest = json.loads((run.root / MANIFEST).read_text())
    entry = manifest["artifacts"][OFFSETS]
    assert entry["sha256"] == sha256_of(run.path(OFFSETS)) == offsets.sha256
    assert entry["size"] == len(b"offsets")
    assert entry["stage"] == "optimize-augs"
    assert entry["options"] == {"iters": 3}
    assert entry["inputs"] == {TEXT_EMBEDDINGS: text.sha256}
    assert entry["clip"] == RN101, "an artifact made from CLIP-bound inputs is bound to that CLIP"
    assert set(entry["versions"]) == {"clipgap", "torch", "mmdet", "mmcv", "mmengine", "open_clip"}
    assert entry["versions"]["torch"]
    assert entry["created"].endswith("+00:00")
    assert manifest["artifacts"][TEXT_EMBEDDINGS]["options"] == {
        "clip": "RN101",
        "prompts": ["a", "b"],
        "file": "p.txt",
    }
    assert Run.open(run.root).verified_path(OFFSETS).read_bytes() == b"offsets"


def test_failed_write_keeps_previous_artifact_and_manifest(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, write_bytes(b"v1"), stage="encode-prompts", options={})
    manifest_before = (run.root / MANIFEST).read_bytes()

    def crash(tmp):
        tmp.write_bytes(b"half of v2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.write(TEXT_EMBEDDINGS, crash, stage="encode-prompts", options={})
    assert run.path(TEXT_EMBEDDINGS).read_bytes() == b"v1"
    assert (run.root / MANIFEST).read_bytes() == manifest_before
    assert run.verified_path(TEXT_EMBEDDINGS)
    assert sorted(p.name for p in run.path(TEXT_EMBEDDINGS).parent.iterdir()) == ["text_embeddings.pt"]


def test_process_killed_mid_write_leaves_previous_artifact_intact(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, write_bytes(b"v1" * 1000), stage="encode-prompts", options={})
    manifest_before = (run.root / MANIFEST).read_bytes()
    writer = textwrap.dedent(f"""
        import os, signal, sys
        from clipgap_cli.rundir import Run, TEXT_EMBEDDINGS
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"partial")
                f.flush()
                print("writing", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        Run.open({str(tmp_path)!r}).write(TEXT_EMBEDDINGS, write, stage="encode-prompts", options={{}})
    """)
    proc = subprocess.run([sys.executable, "-c", writer], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL and "writing" in proc.stdout

    reopened = Run.open(tmp_path)
    assert (tmp_path / MANIFEST).read_bytes() == manifest_before
    assert reopened.verified_path(TEXT_EMBEDDINGS).read_bytes() == b"v1" * 1000


def test_tampered_artifact_is_refused_by_name(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, write_bytes(b"original"), stage="encode-prompts", options={})
    run.path(TEXT_EMBEDDINGS).write_bytes(b"Original")
    with pytest.raises(ClipgapError, match=r"text_embeddings\.pt does not match the sha256"):
        run.verified_path(TEXT_EMBEDDINGS)
    assert run.status(run.artifact(TEXT_EMBEDDINGS)) == "modified"
    os.remove(run.path(TEXT_EMBEDDINGS))
    with pytest.raises(ClipgapError, match=r"text_embeddings\.pt is recorded in the manifest but missing"):
        run.verified_path(TEXT_EMBEDDINGS)


def test_unrecorded_artifact_names_the_stage_that_makes_it(tmp_path):
    run = Run.create(tmp_path)
    with pytest.raises(ClipgapError, match=r"has no augs/offsets\.pt; run `clipgap optimize-augs` first"):
        run.verified_path(OFFSETS)


def test_clip_mismatch_is_refused_before_anything_is_written(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, write_bytes(b"t"), stage="encode-prompts", options={}, clip=RN101)
    with pytest.raises(ClipgapError, match=r"made with CLIP RN101 \(openai\) but this stage uses RN50"):
        run.check_clip([TEXT_EMBEDDINGS], RN50)
    with pytest.raises(ClipgapError, match="use one CLIP model for the whole run"):
        run.write(
            OFFSETS, write_bytes(b"a"), stage="optimize-augs", options={}, inputs=[TEXT_EMBEDDINGS], clip=RN50
        )
    assert not run.path(OFFSETS).exists()
    assert run.artifact(OFFSETS) is None
    assert run.check_clip([TEXT_EMBEDDINGS], RN101) == RN101


def test_same_file_from_another_checkpoint_is_another_clip(tmp_path):
    run = Run.create(tmp_path)
    mine = {"model": "RN50", "pretrained": "rn50.pt", "sha256": "a" * 64}
    theirs = {"model": "RN50", "pretrained": "rn50.pt", "sha256": "b" * 64}
    run.write(TEXT_EMBEDDINGS, write_bytes(b"t"), stage="encode-prompts", options={}, clip=mine)
    with pytest.raises(ClipgapError, match=r"file sha256 aaaaaaaaaaaa.*file sha256 bbbbbbbbbbbb"):
        run.check_clip([TEXT_EMBEDDINGS], theirs)


def test_is_current_tracks_stage_options_and_inputs(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, write_bytes(b"t1"), stage="encode-prompts", options={})
    run.write(
        OFFSETS, write_bytes(b"a"), stage="optimize-augs", options={"iters": (1, 2)}, inputs=[TEXT_EMBEDDINGS]
    )
    assert run.is_current(OFFSETS, "optimize-augs", {"iters": (1, 2)}, [TEXT_EMBEDDINGS])
    assert not run.is_current(OFFSETS, "optimize-augs", {"iters": (1, 3)}, [TEXT_EMBEDDINGS])
    assert not run.is_current(OFFSETS, "train", {"iters": (1, 2)}, [TEXT_EMBEDDINGS])
    run.write(TEXT_EMBEDDINGS, write_bytes(b"t2"), stage="encode-prompts", options={})
    assert not run.is_current(OFFSETS, "optimize-augs", {"iters": (1, 2)}, [TEXT_EMBEDDINGS])


def test_open_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ClipgapError, match="does not exist"):
        Run.open(tmp_path / "nope")
    with pytest.raises(ClipgapError, match="is not a clipgap run directory"):
        Run.open(tmp_path)
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(ClipgapError, match="is not empty and has no manifest.json"):
        Run.create(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"format": 1}',
        '{"format": 7, "artifacts": {}}',
        '{"format": 1, "artifacts": {"x": {"bogus": 1}}}',
        "[]",
    ],
)
def test_corrupt_manifest_is_one_clear_error(tmp_path, content):
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(ClipgapError, match=r"manifest\.json is corrupt .*start a new run directory"):
        Run.open(tmp_path)


def test_artifacts_get_the_mode_a_plain_write_would(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, write_bytes(b"t"), stage="encode-prompts", options={})
    plain = tmp_path / "plain"
    plain.write_bytes(b"t")
    assert run.path(TEXT_EMBEDDINGS).stat().st_mode == plain.stat().st_mode


def test_record_and_forget_files_written_by_another_writer(tmp_path):
    run = Run.create(tmp_path)
    run.write(TEXT_EMBEDDINGS, write_bytes(b"t"), stage="encode-prompts", options={}, clip=RN101)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "iter_4.pth").write_bytes(b"weights")
    recorded = run.record("train/iter_4.pth", stage="train", options={"seed": 0}, inputs=[TEXT_EMBEDDINGS])
    assert recorded.sha256 == sha256_of(tmp_path / "train" / "iter_4.pth") and recorded.clip == RN101
    assert run.verified_path("train/iter_4.pth")
    with pytest.raises(ClipgapError, match="there is no such file"):
        run.record("train/iter_8.pth", stage="train", options={})
    run.forget(["train/iter_4.pth"])
    assert run.artifact("train/iter_4.pth") is None and run.artifact(TEXT_EMBEDDINGS)


@pytest.mark.parametrize(
    "command",
    [
        ["optimize-augs", "--iters", "2", "--device", "cpu", "--data", "{data}"],
        ["train", "--device", "cpu", "--data", "{data}", "--config", "tiny/gridclip_clip-tiny_fpn_synth.py"],
        ["evaluate", "--device", "cpu"],
        ["encode-prompts", "--default-prompts", "--clip", "RN-tiny", "--force"],
    ],
    ids=lambda command: command[0],
)
def test_a_second_writing_stage_is_refused_naming_the_holder(tiny_run, synth_data, command):
    manifest = (tiny_run / MANIFEST).read_bytes()
    with lock_held(tiny_run) as holder:
        args = [command[0], "--run", str(tiny_run), *(a.format(data=synth_data) for a in command[1:])]
        result = CliRunner().invoke(app, args)
    in_use = f"{tiny_run} is in use by optimize-augs (pid {holder.pid}) since "
    assert_one_line_error(result, in_use, "wait for it to finish")
    assert (tiny_run / MANIFEST).read_bytes() == manifest


def test_reading_a_run_takes_no_lock(tiny_run):
    with lock_held(tiny_run, "train"):
        result = CliRunner().invoke(app, ["runs", "show", str(tiny_run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert TEXT_EMBEDDINGS in result.stdout


def test_the_lock_is_released_when_its_stage_fails(tmp_path):
    run = Run.create(tmp_path)
    with pytest.raises(KeyboardInterrupt), run.writing("evaluate"):
        raise KeyboardInterrupt
    with run.writing("train"):
        with pytest.raises(ClipgapError, match=rf"in use by train \(pid {os.getpid()}\)"):
            with Run.open(tmp_path).writing("evaluate"):
                pass


def test_the_lock_of_a_killed_stage_is_taken_over(tiny_run, synth_data):
    from clipgap_cli.stages.optimize_augs import optimize_augs

    # A real stage, SIGKILLed while it holds the lock and optimises.
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    args = ["optimize-augs", "--run", tiny_run, "--data", synth_data, "--iters", "100000", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "clipgap_cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    lock = tiny_run / RUN_LOCK
    deadline = time.monotonic() + 120
    while not (lock.is_file() and f'"pid": {proc.pid}' in lock.read_text()):
        assert proc.poll() is None, "optimize-augs ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)  # into the optimisation
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert f'"pid": {proc.pid}' in lock.read_text(), "the killed stage's record is still there"

    result = optimize_augs(tiny_run, synth_data, iters=1, crops_per_iter=2)
    assert result.changed
    assert CliRunner().invoke(app, ["runs", "show", str(tiny_run)]).exit_code == 0
    assert Run.open(tiny_run).verified(OFFSETS).stage == "optimize-augs"
    assert lock.read_text() == "", "the lock is free again, with no holder recorded"
