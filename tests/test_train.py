"""clipgap train: the tiny detector on the synthetic benchmark, on CPU, in one and two
processes, interrupted and resumed, and refused on bad input."""

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, logged_losses
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.clip import CPU_MODELS
from clipgap_cli.compat import ATOMIC_BACKEND, AtomicCheckpointHook
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import OFFSETS, RUN_LOCK, WORK_DIR, Run
from clipgap_cli.stages.encode_prompts import encode_prompts
from clipgap_cli.stages.optimize_augs import optimize_augs
from clipgap_cli.stages.train import CONFIGS, CPU_DETECTORS, DETECTORS, choose_config, compose_config

TINY = "tiny/faster-rcnn_clip-tiny_c4_synth.py"
NO_AUG = CONFIGS / "clipgap" / "faster-rcnn_clip-rn101_c4_dwd_no-aug.py"


@pytest.fixture
def prepared_run(synth_run, synth_data):
    """A run with text embeddings and offsets of RN-synth."""
    optimize_augs(synth_run, synth_data, iters=2, crops_per_iter=4)
    return synth_run


def train_args(run, data, *extra):
    return ["train", "--run", str(run), "--data", str(data), "--config", TINY, "--device", "cpu", *extra]


def clipgap(*args, **kwargs):
    """`clipgap ARGS` in a fresh process, as a user runs it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "clipgap_cli", *map(str, args)], env=env, **kwargs)


def test_train_learns_and_records_checkpoints(prepared_run, synth_data):
    result = CliRunner().invoke(app, train_args(prepared_run, synth_data, "--max-iters", "40"))
    assert result.exit_code == 0, result.output
    run = Run.open(prepared_run)
    final = run.verified(f"{WORK_DIR}/iter_40.pth")
    assert final.stage == "train"
    assert set(final.inputs) == {"prompts/text_embeddings.pt", OFFSETS}
    assert final.clip == run.artifact(OFFSETS).clip
    assert any(rel.startswith(f"{WORK_DIR}/best_pascal_voc_mAP") for rel in run.artifacts()), run.artifacts()

    losses = logged_losses(run.path(WORK_DIR))
    assert len(losses) >= 4
    assert sum(losses[-2:]) / 2 < 0.85 * sum(losses[:2]) / 2, losses

    checkpoint = torch.load(run.path(f"{WORK_DIR}/iter_40.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["meta"]["iter"] == 40
    offsets = torch.load(run.path(OFFSETS), weights_only=True)["offset_means"]
    augmentation = [k for k in checkpoint["state_dict"] if k.startswith("neck.")]
    assert augmentation and torch.equal(checkpoint["state_dict"][augmentation[0]], offsets)


def test_existing_training_needs_resume_or_force(prepared_run, synth_data):
    runner = CliRunner()
    assert runner.invoke(app, train_args(prepared_run, synth_data, "--max-iters", "2")).exit_code == 0
    result = runner.invoke(app, train_args(prepared_run, synth_data, "--max-iters", "2"))
    assert_one_line_error(result, "already holds a training run", "--resume", "--force")
    assert (
        runner.invoke(app, train_args(prepared_run, synth_data, "--max-iters", "2", "--force")).exit_code == 0
    )


def test_cfg_options_take_several_pairs_after_one_flag_or_the_flag_repeated(prepared_run, synth_data):
    pairs = ["train_cfg.max_iters=2", "train_cfg.val_interval=2"]
    args = train_args(prepared_run, synth_data)
    args = [
        *args[:-2],
        "--cfg-options",
        *pairs,
        "--cfg-options",
        "default_hooks.checkpoint.interval=1",
        *args[-2:],
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = Run.open(prepared_run)
    options = run.verified(f"{WORK_DIR}/iter_2.pth").options
    assert options["cfg_options"] == {
        "train_cfg.max_iters": 2,
        "train_cfg.val_interval": 2,
        "default_hooks.checkpoint.interval": 1,
    }
    assert run.verified(f"{WORK_DIR}/iter_1.pth")


def test_a_cfg_option_without_equals_is_refused(prepared_run, synth_data):
    args = train_args(prepared_run, synth_data, "--cfg-options", "train_cfg.max_iters=2", "val_interval")
    assert_one_line_error(
        CliRunner().invoke(app, args), "--cfg-options takes key=value pairs, got 'val_interval'"
    )
    assert not Run.open(prepared_run).path(WORK_DIR).exists()


def test_a_run_on_a_small_cpu_clip_trains_its_cpu_config_by_default(prepared_run, synth_data, tmp_path):
    args = ["train", "--run", str(prepared_run), "--data", str(synth_data), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--max-iters", "1"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    synth_config = "tiny/faster-rcnn_clip-synth_c4_aug.py"
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("training with")]
    assert line == (
        f"training with {synth_config} (--detector clipgap's CPU config, as the run's CLIP RN-synth is a "
        "small CPU model; --config picks another)"
    )
    options = Run.open(prepared_run).verified(f"{WORK_DIR}/iter_1.pth").options
    assert options["config"] == str(CONFIGS / synth_config)
    path, why = choose_config(prepared_run, "gridclip", None)
    assert path == CONFIGS / "tiny/gridclip_clip-synth_fpn.py" and "RN-synth is a small CPU model" in why
    tiny_run = tmp_path / "tiny"
    encode_prompts(tiny_run, ["an image taken at night"], clip="RN-tiny", pretrained=None)
    assert choose_config(tiny_run, "clipgap", None)[0] == CONFIGS / TINY
    assert choose_config(tiny_run, "gridclip", None)[0] == CONFIGS / "tiny/gridclip_clip-tiny_fpn_synth.py"
    assert set(CPU_DETECTORS) == set(CPU_MODELS)
    assert choose_config(prepared_run, "clipgap", str(NO_AUG)) == (
        NO_AUG,
        f"training with {NO_AUG} (--config)",
    )


def test_a_run_on_a_real_clip_trains_the_papers_config_by_default(tmp_path):
    run = tmp_path / "run"
    encode_prompts(run, ["an image taken at night"], clip="RN50", pretrained=None)
    for detector, config in DETECTORS.items():
        path, why = choose_config(run, detector, None)
        assert path == CONFIGS / config
        assert why == (
            f"training with {config} (--detector {detector}'s default, the paper's schedule, for the run's "
            "CLIP RN50; --config picks another)"
        )


def test_two_cpu_processes_train_with_gloo(prepared_run, synth_data):
    proc = clipgap(
        *train_args(prepared_run, synth_data, "--gpus", "2", "--max-iters", "4", "--master-port", "29631"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-4000:]
    run = Run.open(prepared_run)
    assert run.verified(f"{WORK_DIR}/iter_4.pth")
    (log,) = run.path(WORK_DIR).glob("*/*.log")
    text = log.read_text()
    assert "Distributed training: True" in text and "GPU number: 2" in text, text[:3000]


def processes_below(pid):
    """The processes descended from `pid`, from /proc's parent links: {pid: command line}."""
    parents, commands = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
            commands[int(stat.parent.name)] = (
                (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
    below, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in below:
                below[child] = commands[child]
                frontier.append(child)
    return below


def alive(pid):
    """Whether `pid` is a process that has not ended (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def lock_is_free(run):
    with open(run / RUN_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_the_training_processes_end_with_the_launcher_and_before_its_lock(prepared_run, synth_data, tmp_path,
                                                                         signum):  # fmt: skip
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        args = train_args(
            prepared_run, synth_data, "--gpus", "2", "--max-iters", "1000", "--master-port", "29633"
        )
        launcher = clipgap(*args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "Checkpoints will be saved to" not in log.read_text():  # both processes are training
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    training = processes_below(launcher.pid)
    assert len(training) == 3, training  # torchrun and its two processes
    assert not lock_is_free(prepared_run)

    launcher.send_signal(signum)
    launcher.wait()
    killed = time.monotonic()
    try:
        while any(alive(pid) for pid in training):
            # Checked in this order, a free lock with a process left is caught: none comes back.
            free = lock_is_free(prepared_run)
            left = {pid: command for pid, command in training.items() if alive(pid)}
            assert not (free and left), f"the run's lock is free while {left} still run"
            assert time.monotonic() - killed < 10, f"still running 10 s after the launcher ended: {left}"
            time.sleep(0.05)
    finally:  # a failure leaves no training behind either
        for pid in filter(alive, training):
            os.kill(pid, signal.SIGKILL)
    assert lock_is_free(prepared_run)


def test_killed_training_resumes_at_the_right_iteration(prepared_run, synth_data):
    work_dir = Run.open(prepared_run).path(WORK_DIR)
    args = train_args(
        prepared_run,
        synth_data,
        "--max-iters",
        "30",
        "--cfg-options",
        "default_hooks.checkpoint.interval=5",
        "--cfg-options",
        "train_cfg.val_interval=100",
    )
    proc = clipgap(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while saved_iteration(work_dir) < 10:
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = (work_dir / "last_checkpoint").read_text().strip()
    resumed_from = torch.load(last, map_location="cpu", weights_only=False)["meta"]["iter"]
    assert 10 <= resumed_from < 30
    assert not (work_dir / "iter_30.pth").exists()
    stale = work_dir / ".iter_35.pth.k2j4hz.tmp.pth"  # as a kill during a save leaves it
    stale.write_bytes(b"half a checkpoint")

    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    run = Run.open(prepared_run)
    assert not [rel for rel in run.artifacts() if "tmp" in rel]
    final = torch.load(run.verified_path(f"{WORK_DIR}/iter_30.pth"), map_location="cpu", weights_only=False)
    assert final["meta"]["iter"] == 30
    logs = sorted(work_dir.glob("*/*.log"))
    assert f"resumed epoch: 0, iter: {resumed_from}" in logs[-1].read_text()
    losses_after_resume = logged_losses_in(logs[-1].parent)
    assert losses_after_resume, "the resumed run logged no training iterations"


def test_resume_from_a_checkpoint_that_is_gone_is_refused(prepared_run, synth_data):
    work_dir = Run.open(prepared_run).path(WORK_DIR)
    work_dir.mkdir()
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_5.pth"))
    result = CliRunner().invoke(app, train_args(prepared_run, synth_data, "--resume"))
    assert_one_line_error(result, f"last_checkpoint names {work_dir / 'iter_5.pth'}, which is not a file")


def saved_iteration(work_dir):
    """The iteration of the checkpoint mmengine last finished saving (0 if none)."""
    last = work_dir / "last_checkpoint"
    match = re.search(r"iter_(\d+)\.pth", last.read_text()) if last.is_file() else None
    return int(match.group(1)) if match else 0


def logged_losses_in(log_dir):
    scalars = log_dir / "vis_data" / "scalars.json"
    return [json.loads(line)["loss"] for line in scalars.read_text().splitlines() if '"loss"' in line]


def test_more_gpus_than_visible_is_refused(prepared_run, synth_data):
    args = ["train", "--run", str(prepared_run), "--data", str(synth_data), "--config", TINY, "--gpus", "2"]
    result = CliRunner().invoke(app, args)
    assert_one_line_error(result, "--gpus 2 asks for more GPUs than this machine shows")
    assert not Run.open(prepared_run).path(WORK_DIR).exists()


@pytest.mark.parametrize(
    "launch", [["--gpus", "2"], ["--nnodes", "2", "--master-addr", "node0"], ["--launcher", "slurm"]]
)
def test_one_gpu_index_for_several_processes_is_refused(prepared_run, synth_data, launch):
    args = ["train", "--run", str(prepared_run), "--data", str(synth_data), "--config", TINY]
    result = CliRunner().invoke(app, [*args, *launch, "--device", "cuda:1"])
    assert_one_line_error(result, "--device cuda:1 names one GPU", "CUDA_VISIBLE_DEVICES", "--device cuda")
    assert not Run.open(prepared_run).path(WORK_DIR).exists()


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("meta", "unknown --device 'meta'"),
        ("cuda:x", "unknown --device 'cuda:x'"),
        ("gpu", "unknown --device 'gpu'"),
        (f"cuda:{torch.cuda.device_count()}", "asks for a GPU this machine does not have"),
    ],
)
def test_unusable_devices_are_refused(prepared_run, synth_data, device, message):
    args = ["train", "--run", str(prepared_run), "--data", str(synth_data), "--config", TINY]
    assert_one_line_error(CliRunner().invoke(app, [*args, "--device", device]), message)
    assert not Run.open(prepared_run).path(WORK_DIR).exists()


def test_run_without_text_embeddings_is_refused(tmp_path, synth_data):
    Run.create(tmp_path / "run")
    result = CliRunner().invoke(app, train_args(tmp_path / "run", synth_data))
    assert_one_line_error(result, "run `clipgap encode-prompts` first")
    assert not (tmp_path / "run" / WORK_DIR).exists()


def test_run_without_offsets_is_refused_unless_the_config_needs_none(tiny_run, synth_data):
    result = CliRunner().invoke(app, train_args(tiny_run, synth_data))
    assert_one_line_error(result, "augs/offsets.pt", "clipgap optimize-augs")
    assert not Run.open(tiny_run).path(WORK_DIR).exists()
    cfg, used = compose_config(Run.open(tiny_run), NO_AUG, synth_data)
    assert used["inputs"] == ["prompts/text_embeddings.pt"] and not cfg.model.get("neck")


def test_dataset_with_other_classes_is_refused(tmp_path, synth_data):
    run = tmp_path / "run"
    encode_prompts(
        run, ["an image taken at night"], class_names=["car", "bus"], clip="RN-tiny", pretrained=None
    )
    result = CliRunner().invoke(app, train_args(run, synth_data, "--config", str(NO_AUG)))
    assert_one_line_error(result, "the dataset's classes", "differ from the run's class text embeddings")
    assert not (run / WORK_DIR).exists()


def test_composed_config_takes_sizes_and_paths_from_the_run(prepared_run, synth_data):
    cfg, _ = compose_config(Run.open(prepared_run), NO_AUG, synth_data, max_iters=7, seed=3)
    assert cfg.model.backbone.clip == dict(name="RN-synth", pretrained="synth")
    assert cfg.model.roi_head.bbox_roi_extractor.roi_layer.output_size == 8
    assert (cfg.model.roi_head.bbox_head.in_channels, cfg.model.roi_head.bbox_head.embed_dim) == (512, 64)
    assert cfg.train_cfg.max_iters == 7 and cfg.randomness.seed == 3
    assert cfg.train_dataloader.dataset.ann_file.endswith("daytime_clear_train.json")
    assert cfg.val_dataloader.dataset.ann_file.endswith("daytime_clear_test.json")
    assert cfg.work_dir == str(Run.open(prepared_run).path(WORK_DIR).resolve())
    assert cfg.default_hooks.checkpoint.backend_args == dict(backend=ATOMIC_BACKEND)  # whole or none
    assert cfg.default_hooks.checkpoint.type == AtomicCheckpointHook.__name__  # removals after saves


@pytest.mark.parametrize("installed", [True, False])
def test_tensorboard_logging_when_asked(prepared_run, synth_data, monkeypatch, installed):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (object() if installed else None) if name == "tensorboard" else find_spec(name, *a),
    )
    run = Run.open(prepared_run)
    if not installed:
        with pytest.raises(ClipgapError, match="needs the tensorboard package"):
            compose_config(run, CONFIGS / TINY, synth_data, tensorboard=True)
        return
    cfg, _ = compose_config(run, CONFIGS / TINY, synth_data, tensorboard=True)
    assert [b["type"] for b in cfg.visualizer.vis_backends] == ["LocalVisBackend", "TensorboardVisBackend"]
