"""A full disk: every command that writes says so in one line with the path and exits 1, leaves
no temporary file behind and a manifest that still verifies; a training keeps its last
checkpoint, and resumes once there is space again.

The disk is a real filesystem of its own, a tmpfs mounted for the test (which needs root, as
CI runs the suite; elsewhere these tests are skipped with that reason), filled with one file
to the byte count each test chooses.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.compat import LAST_CHECKPOINT
from clipgap_cli.io import TEMPORARY
from clipgap_cli.rundir import OFFSETS, RUN_LOCK, WORK_DIR, Run
from clipgap_cli.stages.optimize_augs import optimize_augs
from clipgap_cli.stages.train import Launch, resolve_config, train

FIXTURE = Path(__file__).parent / "fixtures" / "voc_small"
TINY = "tiny/faster-rcnn_clip-tiny_c4_synth.py"


class Disk:
    """A tmpfs mounted at `root` for one test, and a file that fills it."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler"

    def fill(self, leave: int = 0) -> None:
        """Take all the free space but `leave` bytes."""
        fs = os.statvfs(self.root)
        size = fs.f_bavail * fs.f_frsize - leave
        with open(self.filler, "ab") as f:  # written, not truncated: a sparse file takes no space
            for start in range(0, size, 1 << 20):
                f.write(bytes(min(1 << 20, size - start)))

    def free(self) -> None:
        self.filler.unlink()

    def leftovers(self) -> list[Path]:
        """Temporary files and directories of clipgap's writers (`.NAME.RANDOM.tmp...`)."""
        return [p for p in self.root.rglob(".*") if TEMPORARY in p.name]


@pytest.fixture
def disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(root)], capture_output=True
    )
    if mounted.returncode != 0:  # reported among the skips, with the reason
        pytest.skip(f"the full-disk tests mount a tmpfs, which needs root: {mounted.stderr.decode().strip()}")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", "--lazy", str(root)], check=True)


def assert_disk_full(result, disk: Disk, written: Path, run: Path | None = None) -> None:
    """One line that says the disk is full and names what could not be written (under
    `written`); nothing temporary left; every recorded artifact of `run` verifies."""
    assert_one_line_error(result, str(written))
    assert "no space left on device" in result.stderr.lower()
    assert not disk.leftovers(), disk.leftovers()
    if run is not None:
        opened = Run.open(run)
        assert {rel: opened.status(a) for rel, a in opened.artifacts().items()} == dict.fromkeys(
            opened.artifacts(), "ok"
        )


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def prepared_run(synth_run, synth_data):
    """A run with text embeddings and offsets of RN-synth."""
    optimize_augs(synth_run, synth_data, iters=2, crops_per_iter=4)
    return synth_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synth_data):
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
    from clipgap_cli.stages.encode_prompts import encode_prompts

    run = tmp_path_factory.mktemp("trained") / "run"
    encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-synth", pretrained="synth")
    optimize_augs(run, synth_data, iters=2, crops_per_iter=4)
    train(run, resolve_config(TINY), synth_data, launch=Launch(device="cpu"), max_iters=2)
    return run


def test_data_synth(disk):
    disk.fill()
    result = invoke("data", "synth", disk.root / "data", "--images-per-domain", 2, "--size", 64)
    assert_disk_full(result, disk, disk.root / "data")


def test_data_convert(disk):
    disk.fill()
    result = invoke("data", "convert", FIXTURE, "--out", disk.root / "data")
    assert_disk_full(result, disk, disk.root / "data")


def test_encode_prompts(disk):
    run = Run.create(disk.root / "run").root
    disk.fill(leave=4096)  # room for the run lock's record, not for the embeddings
    result = invoke("encode-prompts", "--default-prompts", "--clip", "RN-tiny", "--run", run)
    assert_disk_full(result, disk, run / "prompts" / "text_embeddings.pt", run)

    (run / RUN_LOCK).unlink()
    disk.fill()  # not even room for the lock's record
    result = invoke("encode-prompts", "--default-prompts", "--clip", "RN-tiny", "--run", run)
    assert_disk_full(result, disk, run / RUN_LOCK, run)


def test_optimize_augs(disk, synth_run, synth_data):
    run = shutil.copytree(synth_run, disk.root / "run")
    disk.fill(leave=64 << 10)  # room for the report, not for the offsets
    result = invoke("optimize-augs", "--run", run, "--data", synth_data, "--iters", 1, "--crops-per-iter", 2,
                    "--device", "cpu")  # fmt: skip
    assert_disk_full(result, disk, run / OFFSETS, run)
    assert not (run / OFFSETS).exists()


def test_train_keeps_its_last_checkpoint_and_resumes_once_there_is_space(disk, prepared_run, synth_data):
    run = shutil.copytree(prepared_run, disk.root / "run")
    work_dir = run / WORK_DIR
    hook = "default_hooks.checkpoint"
    args = ["train", "--run", run, "--data", synth_data, "--config", TINY, "--device", "cpu", "--cfg-options"]
    args += [f"{hook}.interval=1", f"{hook}.max_keep_ckpts=1", f"{hook}.save_best=None"]
    args += ["train_cfg.val_interval=9"]  # no validation: no best checkpoint either
    assert invoke(*args, "--max-iters", 1).exit_code == 0
    first = work_dir / "iter_1.pth"
    # Room for half a checkpoint: the next save fails unless iter_1.pth is removed first, as
    # mmengine's own hook does (max_keep_ckpts=1).
    disk.fill(leave=first.stat().st_size // 2)

    result = invoke(*args, "--max-iters", 3, "--resume")
    assert_disk_full(result, disk, work_dir / "iter_2.pth", run)
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["iter_1.pth"]
    assert (work_dir / LAST_CHECKPOINT).read_text() == str(first)
    assert torch.load(first, map_location="cpu", weights_only=False)["meta"]["iter"] == 1

    disk.free()
    result = invoke(*args, "--max-iters", 3, "--resume")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["iter_3.pth"]
    assert Run.open(run).verified(f"{WORK_DIR}/iter_3.pth")
    assert not disk.leftovers()


def test_train_with_no_room_for_its_logs(disk, prepared_run, synth_data):
    # mmengine's own writes (its log, its scalars) fail with an error that names no file; with
    # a log line every iteration, the disk is full within a few.
    run = shutil.copytree(prepared_run, disk.root / "run")
    disk.fill(leave=64 << 10)
    args = ["train", "--run", run, "--data", synth_data, "--config", TINY, "--device", "cpu"]
    logged = ["--max-iters", 9, "--cfg-options", "default_hooks.logger.interval=1"]
    assert_disk_full(invoke(*args, *logged), disk, run / WORK_DIR, run)
    assert not list((run / WORK_DIR).glob("*.pth"))


def test_evaluate(disk, trained_run, synth_data):
    run = shutil.copytree(trained_run, disk.root / "run")
    disk.fill(leave=4096)  # room for the run lock's record, not for the evaluation
    result = invoke(
        "evaluate", "--run", run, "--data", synth_data, "--domain", "daytime_clear", "--device", "cpu"
    )
    assert_disk_full(result, disk, run / "eval", run)


@pytest.mark.parametrize("leave", [0, 64 << 10], ids=["full", "room-for-the-config-only"])
def test_export(disk, trained_run, leave):
    disk.fill(leave=leave)
    result = invoke("export", "--run", trained_run, "--out", disk.root / "bundle")
    assert_disk_full(result, disk, disk.root / "bundle", trained_run)
    assert not (disk.root / "bundle").exists()


def test_predict(disk, trained_run, synth_data):
    images = sorted((synth_data / "voc" / "daytime_clear" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:2]
    disk.fill()
    result = invoke("predict", trained_run, *images, "--out", disk.root / "predictions", "--device", "cpu")
    assert_disk_full(result, disk, disk.root / "predictions", trained_run)


def test_clip_pretrain(disk):
    disk.fill()
    out = disk.root / "clip.pt"
    recipe = ["--scenes", 2, "--looks-per-scene", 1, "--crops-per-image", 0, "--steps", 1, "--batch-size", 2]
    result = invoke("clip", "pretrain", "--out", out, *recipe)
    assert_disk_full(result, disk, out)
    assert not out.exists()


def test_torchs_writer_on_a_full_disk_is_a_full_disk_and_other_failures_are_not(disk):
    from clipgap_cli.io import atomic_write, is_no_space

    disk.fill(leave=64 << 10)
    out = disk.root / "big.pt"
    with pytest.raises(OSError, match="No space left on device") as raised:
        atomic_write(out, lambda tmp: torch.save(torch.zeros(1 << 20), tmp))
    assert raised.value.filename == str(out) and is_no_space(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)  # torch says only "unexpected pos"
    assert not out.exists() and not disk.leftovers()

    disk.free()

    def broken(tmp):
        raise RuntimeError("not a disk problem")

    with pytest.raises(RuntimeError, match="not a disk problem"):
        atomic_write(out, broken)
    assert not disk.leftovers()
