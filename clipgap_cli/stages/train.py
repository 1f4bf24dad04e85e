"""Stage `train`: the CLIP the Gap or GridCLIP detector, trained by mmengine's Runner on one CPU,
one or many GPUs, or many machines.

The stage composes an MMDetection config with the run's artifacts (CLIP model, class text
embeddings, semantic augmentations) and the dataset's paths, keeps mmengine's work directory
inside the run directory (`train/`), and records the checkpoints in the manifest. One
process trains in this process; several are started by torchrun, each running this module.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from mmengine.config import Config, DictAction

from clipgap_cli.artifacts import encode_tensor, load_text_embeddings, recorded_checkpoints
from clipgap_cli.clip.model import load_run_clip
from clipgap_cli.clip.split import visual_dims
from clipgap_cli.compat import ATOMIC_BACKEND, LAST_CHECKPOINT, AtomicCheckpointHook
from clipgap_cli.data.spec import load_run_dataset, set_dataset
from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import TEMPORARY, atomic_write, is_no_space
from clipgap_cli.models.detectors import augmentation_of, fill_model
from clipgap_cli.rundir import OFFSETS, TEXT_EMBEDDINGS, TRAINED_CONFIG, WORK_DIR, Run

STAGE = "train"
CONFIGS = Path(__file__).resolve().parents[1] / "mmconfigs"  # clipgap's configs, package data
# `clipgap train --detector`: each detector's default config, inside mmconfigs/: the paper's,
# and for a run on one of clipgap's small CPU CLIPs that CLIP's CPU config.
DETECTORS = {
    "clipgap": "clipgap/faster-rcnn_clip-rn101_c4_dwd.py",
    "gridclip": "gridclip/gridclip_clip-rn101_fpn_dwd.py",
}
CPU_DETECTORS = {
    "RN-tiny": {
        "clipgap": "tiny/faster-rcnn_clip-tiny_c4_synth.py",
        "gridclip": "tiny/gridclip_clip-tiny_fpn_synth.py",
    },
    "RN-synth": {
        "clipgap": "tiny/faster-rcnn_clip-synth_c4_aug.py",
        "gridclip": "tiny/gridclip_clip-synth_fpn.py",
    },
}
STOP_SECONDS = 60  # how long torchrun gets to stop its processes before it is killed
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Launch:
    """How many processes, where, and how they find each other."""

    gpus: int = 1  # processes per node: one per GPU, or CPU processes with device "cpu"
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"  # "none" (this command starts the processes) or "slurm" (srun does)
    device: str = "cuda"  # "cpu", "cuda", or "cuda:K" (GPU K, for one process)

    def __post_init__(self):
        if self.device.startswith("cuda:") and (self.processes > 1 or self.launcher != "none"):
            # torchrun and slurm give each process its GPU by local rank; one index cannot say
            # which GPUs several processes take.
            raise ClipgapError(
                f"--device {self.device} names one GPU, but --gpus {self.gpus} --nnodes {self.nnodes} "
                f"--launcher {self.launcher} starts processes that each take the GPU of their local rank; "
                "choose their GPUs with CUDA_VISIBLE_DEVICES and pass --device cuda"
            )

    @property
    def processes(self) -> int:
        return self.gpus * self.nnodes


def resolve_config(config: str | Path) -> Path:
    """A config file: the path itself if it exists, else that path inside clipgap's mmconfigs/."""
    path = Path(config)
    if path.is_file():
        return path
    if (CONFIGS / path).is_file():
        return CONFIGS / path
    raise ClipgapError(f"config {config} does not exist, neither as a file nor inside {CONFIGS}")


def choose_config(run: Path, detector: str, config: str | None) -> tuple[Path, str]:
    """The config to train (`config`, else the detector's default for the run's CLIP model),
    and one line that says which and why."""
    if config is not None:
        return resolve_config(config), f"training with {config} (--config)"
    clip = Run.open(run).verified(TEXT_EMBEDDINGS).clip or {}
    if clip.get("model") in CPU_DETECTORS:
        chosen = CPU_DETECTORS[clip["model"]][detector]
        why = f"--detector {detector}'s CPU config, as the run's CLIP {clip['model']} is a small CPU model"
    else:
        chosen = DETECTORS[detector]
        why = f"--detector {detector}'s default, the paper's schedule, for the run's CLIP {clip.get('model')}"
    return resolve_config(chosen), f"training with {chosen} ({why}; --config picks another)"


def parse_cfg_options(options: list[str]) -> dict[str, Any]:
    """`key=value` pairs, values parsed as MMDetection's `--cfg-options` parses them."""
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ClipgapError(f"--cfg-options takes key=value pairs, got {option!r}")
        parsed[key] = DictAction._parse_iterable(value)
    return parsed


def compose_config(
    run: Run,
    config: Path,
    data: Path,
    *,
    pretrained: Path | None = None,
    max_iters: int | None = None,
    seed: int = 0,
    amp: bool = False,
    resume: bool = False,
    tensorboard: bool = False,
    cfg_options: dict[str, Any] | None = None,
    launch: Launch = Launch(),
) -> tuple[Config, dict[str, Any]]:
    """The config to train with, and the run artifacts it uses; every check before any write.

    Fills in what the run and the dataset decide, where the detector's type says
    (`clipgap_cli.models.detectors`): the CLIP model of the text embeddings and its sizes,
    the class embeddings, the semantic augmentations (if the config has them), the dataset's
    classes and paths, the work directory, seed, AMP, launcher. Refuses a mismatch in one
    sentence.
    """
    try:
        cfg = Config.fromfile(str(config))
    except Exception as err:  # a config is Python: any error in it is the user's to fix
        raise ClipgapError(f"cannot load config {config}: {type(err).__name__}: {err}") from None
    text = load_text_embeddings(run)
    try:
        augmented = augmentation_of(cfg.model) is not None
    except KeyError as err:
        raise _incomplete(config, err) from None
    inputs = [TEXT_EMBEDDINGS, OFFSETS] if augmented else [TEXT_EMBEDDINGS]
    if augmented:
        run.verified(OFFSETS)
    spec = load_run_dataset(data, text.class_names)
    model, identity = load_run_clip(text.clip, pretrained)
    run.check_clip(inputs, identity)
    dims = visual_dims(model.visual)
    clip_cfg = dict(
        name=identity["model"], pretrained=str(pretrained) if pretrained else identity["pretrained"]
    )
    files = {rel: str(run.path(rel).resolve()) for rel in inputs}
    # With novel classes, the detector learns the base classes alone: their embeddings, and
    # datasets whose class list drops the novel boxes (mmdet's CocoDataset skips the
    # annotations of categories outside it), for training and for checkpoint selection.
    classes = spec.base_classes
    embeddings: str | dict = files[TEXT_EMBEDDINGS]
    if spec.novel_classes:
        embeddings = encode_tensor(text.classes[[text.class_names.index(c) for c in classes]])
    try:
        fill_model(cfg.model, clip_cfg, dims, len(classes), embeddings, files.get(OFFSETS))
    except (AttributeError, KeyError, TypeError) as err:
        raise _incomplete(config, err) from None

    metainfo = dict(classes=classes)
    source = spec.source.name
    set_dataset(cfg.train_dataloader.dataset, spec.train_split, metainfo)
    for loader in ("val_dataloader", "test_dataloader"):
        if cfg.get(loader):
            set_dataset(cfg[loader].dataset, spec.eval_split(source), metainfo)

    cfg.work_dir = str(run.path(WORK_DIR).resolve())
    # Each process draws its own augmentation coin and domains, as separate batches would.
    cfg.randomness = dict(seed=seed, deterministic=False, diff_rank_seed=launch.processes > 1)
    if max_iters is not None:
        cfg.train_cfg.max_iters = max_iters
    if amp:
        if launch.device == "cpu":
            raise ClipgapError("--amp needs a GPU; drop it to train on the CPU")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    cfg.resume = resume
    if tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            raise ClipgapError("--vis tensorboard needs the tensorboard package: pip install tensorboard")
        cfg.visualizer.vis_backends = [*cfg.visualizer.vis_backends, dict(type="TensorboardVisBackend")]
    cfg.launcher = "none" if launch.processes == 1 and launch.launcher == "none" else launch.launcher
    if cfg.launcher == "none" and launch.processes > 1:
        cfg.launcher = "pytorch"
    if launch.device == "cpu":
        # DDP on CPU: gloo, and no device ids (mmengine would pass the local rank as a GPU).
        cfg.env_cfg.dist_cfg = dict(backend="gloo")
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None)
    hook = cfg.get("default_hooks", {}).get("checkpoint")
    if hook is not None and hook.get("type") == "CheckpointHook":
        # Old checkpoints removed only once the new one is saved, last_checkpoint written whole.
        hook.type = AtomicCheckpointHook.__name__
    if hook is not None and not (hook.get("backend_args") or hook.get("file_client_args")):
        # Checkpoints written whole or not at all, even by a training killed mid-save.
        hook.backend_args = dict(backend=ATOMIC_BACKEND)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    options = {
        "config": str(config.resolve()),
        "data": str(Path(data).resolve()),
        "max_iters": cfg.train_cfg.get("max_iters"),
        "seed": seed,
        "amp": amp,
        "cfg_options": cfg_options or {},
        "processes": launch.processes,
    }
    if spec.novel_classes:
        options["novel_classes"] = list(spec.novel_classes)
    return cfg, {"inputs": inputs, "clip": identity, "options": options}


def _incomplete(config: Path, err: Exception) -> ClipgapError:
    return ClipgapError(
        f"cannot complete config {config}: its model is neither clipgap's C4 Faster R-CNN nor GridCLIP "
        f"({err}); start from a config in clipgap's mmconfigs/clipgap/ or mmconfigs/gridclip/"
    )


def train(
    run_path: Path,
    config: Path,
    data: Path,
    *,
    launch: Launch = Launch(),
    resume: bool = False,
    force: bool = False,
    **compose,
) -> list[str]:
    """Train, then record the work directory's checkpoints in the manifest; returns their paths.

    One process trains here; several run under torchrun (on this node: `launch.gpus`
    processes; with `nnodes` > 1, this node's share of the job). With `launch.launcher ==
    "slurm"` this process is one task of an `srun` job and trains here. A run that already
    has checkpoints continues with `resume` or starts over with `force`, never by accident.
    """
    run = Run.open(run_path)
    _check_devices(launch)
    leads = _leads(launch)
    with run.writing(STAGE) if leads else contextlib.nullcontext() as lock:
        cfg, record = compose_config(run, config, data, launch=launch, resume=resume, **compose)
        work_dir = run.path(WORK_DIR)
        last_checkpoint = work_dir / LAST_CHECKPOINT
        has_checkpoint = last_checkpoint.is_file()
        if resume and not has_checkpoint:
            raise ClipgapError(f"nothing to resume in {work_dir}: no checkpoint was saved there yet")
        last = last_checkpoint.read_text().strip() if resume else ""
        if resume and not Path(last).is_file():
            raise ClipgapError(
                f"cannot resume: {last_checkpoint} names {last or 'nothing'}, which is not a file; "
                "write the path of a checkpoint in it, or pass --force to start over"
            )
        if has_checkpoint and not (resume or force):
            raise ClipgapError(
                f"{work_dir} already holds a training run; "
                "pass --resume to continue it or --force to start over"
            )
        if leads:
            # A training killed while saving leaves its checkpoint's temporary file behind.
            for stale in work_dir.glob(f".*{TEMPORARY}.pth"):
                stale.unlink()
        config_path = run.path(TRAINED_CONFIG)
        if leads:
            # Rewritten now, recorded when the training ends: until then the manifest has no
            # record the file would fail.
            run.forget([TRAINED_CONFIG])
        atomic_write(config_path, lambda tmp: tmp.write_text(cfg.pretty_text))
        if cfg.launcher == "pytorch":
            _torchrun(config_path, launch, lock)
        else:
            run_runner(config_path, device=launch.device)
        if launch.node_rank != 0 or _rank() != 0:
            return []
        return record_checkpoints(run, **record)


def record_checkpoints(run: Run, inputs: list[str], clip: dict, options: dict) -> list[str]:
    """Record the resolved config and every checkpoint in the work directory; forget those
    mmengine has since deleted. The config is an artifact, as mmengine's Runner leaves it (it
    dumps the config it ran under the same name): evaluate, export and predict build the
    detector from it."""
    run.record(TRAINED_CONFIG, stage=STAGE, options=options, inputs=inputs, clip=clip)
    recorded = recorded_checkpoints(run)
    present = sorted(p.relative_to(run.root).as_posix() for p in run.path(WORK_DIR).glob("[!.]*.pth"))
    run.forget(set(recorded) - set(present))
    for rel in present:
        run.record(rel, stage=STAGE, options=options, inputs=inputs, clip=clip)
    return present


def _leads(launch: Launch) -> bool:
    """Whether this is the job's first process, the one that holds the run's lock for the whole
    training: not the processes torchrun starts (they run `run_runner` only), nor another
    machine's command or srun task."""
    return launch.node_rank == 0 and (
        launch.launcher != "slurm" or os.environ.get("SLURM_PROCID", "0") == "0"
    )


def _check_devices(launch: Launch) -> None:
    if launch.gpus < 1 or launch.nnodes < 1 or not 0 <= launch.node_rank < launch.nnodes:
        raise ClipgapError("--gpus and --nnodes must be at least 1, and --node-rank in 0..nnodes-1")
    if launch.device != "cpu" and launch.launcher == "none":
        visible = torch.cuda.device_count()
        if launch.gpus > visible:
            raise ClipgapError(
                f"--gpus {launch.gpus} asks for more GPUs than this machine shows ({visible}); "
                "lower --gpus, or add --device cpu to train on the CPU"
            )


def _torchrun(config_path: Path, launch: Launch, lock: IO[bytes] | None) -> None:
    """Train in `launch.gpus` processes under torchrun, which live and die with this one.

    torchrun inherits the run's lock (`lock`, the open lock file, or None on another node), so
    the lock is held until it ends, and it ends only after its processes: killed with this
    process (SIGKILL included: the kernel sends it SIGTERM, on which it stops them), or
    stopped by it when this process is interrupted.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={launch.nnodes}", f"--node_rank={launch.node_rank}",
        f"--nproc_per_node={launch.gpus}",
        f"--master_addr={launch.master_addr}", f"--master_port={launch.master_port}",
        "-m", __name__, str(config_path),
    ]  # fmt: skip
    if launch.device == "cpu":
        command.append("--cpu")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if launch.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    torchrun = subprocess.Popen(
        command,
        env=env,
        pass_fds=() if lock is None else (lock.fileno(),),
        # Its own session: an interruption reaches it once, from here, not also from the terminal.
        start_new_session=True,
        preexec_fn=_dies_with(os.getpid(), signal.SIGTERM),
    )
    try:
        returncode = torchrun.wait()
    except BaseException:  # an interruption (Ctrl-C, SIGTERM): stop it, and so its processes, first
        torchrun.send_signal(signal.SIGTERM)
        try:
            torchrun.wait(timeout=STOP_SECONDS)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or interrupted again
            torchrun.kill()  # its processes get SIGKILL too, as their parent ends
            torchrun.wait()
        raise
    if returncode != 0:
        raise ClipgapError(
            f"training failed in one of its {launch.processes} processes (exit status {returncode}); "
            f"see the log above and {config_path.parent}"
        )


def _dies_with(parent: int, signum: int) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send the child `signum` when `parent` ends (Linux's
    parent-death signal), and ends a child whose parent has already ended; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not after

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:
            os._exit(1)

    return set_parent_death_signal


def run_runner(config_path: Path, device: str = "cuda") -> None:
    """Build mmengine's Runner from the composed config and train on `device` ("cpu", "cuda",
    or "cuda:K" for one process): in this process, or in each process torchrun starts."""
    import mmdet.utils
    from mmengine.runner import Runner

    cpu = device == "cpu"
    if cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device != "cuda":
        # mmengine puts the model on "cuda", the current GPU: make that GPU K.
        torch.cuda.set_device(torch.device(device))
    cfg = Config.fromfile(str(config_path))
    # mmengine keeps one visualizer per name for the whole process: a second training in the
    # same process would log its scalars into the first one's directory.
    cfg.visualizer.name = f"visualizer_{os.getpid()}_{time.monotonic_ns()}"
    mmdet.utils.register_all_modules(init_default_scope=False)
    if cfg.launcher == "pytorch" and cpu and not torch.distributed.is_initialized():
        # mmengine's init_dist picks a CUDA device per rank; on the CPU, join the group here.
        torch.distributed.init_process_group(backend="gloo")
    with _log_files_stop_on_a_full_disk():
        Runner.from_cfg(cfg).train()
    if torch.distributed.is_initialized():
        # After a training that ended well only (a rank that failed would wait here for the
        # others): a process group left to the interpreter's exit can abort it, gloo's threads
        # still running ("terminate called without an active exception", SIGABRT).
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _log_files_stop_on_a_full_disk() -> Iterator[None]:
    """Python's logging prints a traceback for each record a file handler fails to write, and
    goes on (mmengine's log in `train/`); a full disk stops the training instead, in one line, as
    every other write does."""
    handle_error = logging.FileHandler.handleError

    def stop_on_a_full_disk(handler: logging.FileHandler, record: logging.LogRecord) -> None:
        if is_no_space(failed := sys.exc_info()[1]):
            raise failed
        handle_error(handler, record)

    logging.FileHandler.handleError = stop_on_a_full_disk
    try:
        yield
    finally:
        logging.FileHandler.handleError = handle_error


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


if __name__ == "__main__":  # one torchrun process
    parser = argparse.ArgumentParser(description="Train from a composed clipgap config (torchrun entry).")
    parser.add_argument("config", type=Path)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    # Ended with torchrun, however torchrun ends (it stops its processes itself when it can).
    if die_with_torchrun := _dies_with(os.getppid(), signal.SIGKILL):
        die_with_torchrun()
    import clipgap_cli  # noqa: F401  (the stack fixes)

    run_runner(args.config, device="cpu" if args.cpu else "cuda")
