"""The stack fixes of clipgap_cli.compat: mmengine resume on current torch, mmdet:: configs
without pkg_resources, checkpoints that a kill cannot truncate or leave without a successor."""

import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import clipgap_cli  # noqa: F401  (applies the fixes)
from clipgap_cli.compat import ATOMIC_BACKEND, LAST_CHECKPOINT, AtomicCheckpointHook


class Line(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 1)

    def forward(self, inputs, targets, mode="tensor"):
        inputs, targets = torch.stack(inputs), torch.stack(targets)
        if mode == "loss":
            return {"loss": ((self.fc(inputs) - targets) ** 2).mean()}
        return self.fc(inputs)


class Points(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.tensor([float(i), 1.0])
        return {"inputs": x, "targets": x[:1] * 0.5 - 1.0}


class RecordState(Hook):
    """Keeps what the Runner holds when training (re)starts and when it ends."""

    def __init__(self):
        self.seen = {}

    def before_train(self, runner):
        self.seen["start"] = self._state(runner)

    def after_train(self, runner):
        self.seen["end"] = self._state(runner)

    @staticmethod
    def _state(runner):
        optimizer = runner.optim_wrapper.optimizer
        return {
            "epoch": runner.epoch,
            "iter": runner.iter,
            "lr": optimizer.param_groups[0]["lr"],
            "adam": {
                k: [v.clone() if torch.is_tensor(v) else v for v in s.values()]
                for k, s in optimizer.state_dict()["state"].items()
            },
        }


def make_runner(work_dir, max_epochs, resume, hook="CheckpointHook", **checkpoint):
    recorder = RecordState()
    runner = Runner(
        model=Line(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=Points(),
            sampler=dict(type="DefaultSampler", shuffle=False),
            batch_size=2,
            collate_fn=dict(type="pseudo_collate"),
        ),
        optim_wrapper=dict(optimizer=dict(type="Adam", lr=0.01)),
        param_scheduler=dict(type="MultiStepLR", milestones=[1], gamma=0.5, by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type=hook, interval=1, **checkpoint)),
        custom_hooks=[recorder],
        resume=resume,
        randomness=dict(seed=0),
        experiment_name=f"exp-{max_epochs}-{resume}",
    )
    return runner, recorder


def test_resume_restores_epoch_iteration_and_optimizer_state(tmp_path):
    first, first_seen = make_runner(tmp_path, max_epochs=2, resume=False)
    first.train()
    checkpoint = tmp_path / "epoch_2.pth"
    assert checkpoint.is_file()
    # The failure the fix exists for: torch's default weights_only load refuses the file.
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(checkpoint)

    second, second_seen = make_runner(tmp_path, max_epochs=3, resume=True)
    second.train()

    end, start = first_seen.seen["end"], second_seen.seen["start"]
    assert (start["epoch"], start["iter"]) == (2, 8) == (end["epoch"], end["iter"])
    assert start["lr"] == pytest.approx(0.005) == end["lr"]
    assert start["adam"].keys() == end["adam"].keys() and start["adam"]
    for key in end["adam"]:
        for resumed, saved in zip(start["adam"][key], end["adam"][key], strict=True):
            torch.testing.assert_close(resumed, saved)
    assert (second_seen.seen["end"]["epoch"], second_seen.seen["end"]["iter"]) == (3, 12)


def test_load_from_loads_weights(tmp_path):
    first, _ = make_runner(tmp_path / "a", max_epochs=1, resume=False)
    first.train()
    from mmengine.runner import load_checkpoint

    model = Line()
    load_checkpoint(model, str(tmp_path / "a" / "epoch_1.pth"))
    torch.testing.assert_close(model.fc.weight, first.model.fc.weight)


def test_mmdet_base_configs_load_without_pkg_resources(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text("_base_ = 'mmdet::_base_/default_runtime.py'\n")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["pkg_resources"] = None  # as with setuptools >= 82: the import fails
        from mmengine.config import Config
        try:
            Config.fromfile({str(config)!r})
            raise SystemExit("expected the unpatched mmengine to fail")
        except ModuleNotFoundError as err:
            assert "pkg_resources" in str(err), err
        import clipgap_cli
        cfg = Config.fromfile({str(config)!r})
        print(cfg.default_scope, cfg.default_hooks.checkpoint.type)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["mmdet", "CheckpointHook"]


def test_voc_evaluation_does_not_fork():
    from multiprocessing.pool import ThreadPool

    import numpy as np
    from mmdet.evaluation.functional import eval_map, mean_ap

    assert mean_ap.Pool is ThreadPool
    rng = np.random.default_rng(0)
    boxes = lambda n: np.sort(rng.uniform(0, 100, (n, 4)), axis=1)[:, [0, 2, 1, 3]]  # noqa: E731
    annotations = [{"bboxes": boxes(3), "labels": np.array([0, 1, 0])} for _ in range(3)]
    detections = [
        [np.hstack([a["bboxes"][a["labels"] == c], np.ones(((a["labels"] == c).sum(), 1))]) for c in range(2)]
        for a in annotations
    ]
    mean, results = eval_map(detections, annotations, nproc=4, logger="silent", eval_mode="11points")
    assert mean == pytest.approx(1.0)
    assert [r["num_gts"] for r in results] == [6, 3]


def kill_during_save(work_dir, hook, save="epoch_3.pth"):
    """Train with `hook` (max_keep_ckpts=1, the atomic backend) in a process that is SIGKILLed
    while it writes `save` through the backend, half of it on disk."""
    trainer = textwrap.dedent(f"""
        import pathlib, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_compat import ATOMIC_BACKEND, make_runner

        write_bytes = pathlib.Path.write_bytes

        def slow_write(self, data):
            if self.name.startswith(".{save}."):
                write_bytes(self, data[: len(data) // 2])
                print("saving", self.name, flush=True)
                time.sleep(600)
            return write_bytes(self, data)

        pathlib.Path.write_bytes = slow_write
        runner, _ = make_runner({str(work_dir)!r}, max_epochs=4, resume=False, hook={hook!r},
                                max_keep_ckpts=1, backend_args=dict(backend=ATOMIC_BACKEND))
        runner.train()
    """)
    proc = subprocess.Popen([sys.executable, "-c", trainer], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # mmengine's log, then ours
        if line.startswith("saving "):
            break
    assert line.startswith(f"saving .{save}."), "the save was not written through the backend"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert len(list(work_dir.glob(f".{save}.*"))) == 1  # the kill landed inside the write


def test_mmengines_checkpoint_hook_removes_the_last_checkpoint_before_it_saves_the_next(tmp_path):
    # The failure AtomicCheckpointHook exists for: killed during the save of epoch_3.pth with
    # max_keep_ckpts=1, mmengine's hook has already removed epoch_2.pth, and last_checkpoint names it.
    kill_during_save(tmp_path, "CheckpointHook")
    assert not list(tmp_path.glob("epoch_*.pth"))
    assert (tmp_path / LAST_CHECKPOINT).read_text() == str(tmp_path / "epoch_2.pth")


def test_a_kill_during_a_checkpoint_save_leaves_the_last_checkpoint_and_resumes(tmp_path):
    kill_during_save(tmp_path, AtomicCheckpointHook.__name__)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_2.pth"]
    assert (tmp_path / LAST_CHECKPOINT).read_text() == str(tmp_path / "epoch_2.pth")
    saved = torch.load(tmp_path / "epoch_2.pth", map_location="cpu", weights_only=False)
    assert saved["meta"]["epoch"] == 2

    resumed, seen = make_runner(tmp_path, max_epochs=4, resume=True, hook=AtomicCheckpointHook.__name__,
                                max_keep_ckpts=1, backend_args=dict(backend=ATOMIC_BACKEND))  # fmt: skip
    resumed.train()
    assert (seen.seen["start"]["epoch"], seen.seen["end"]["epoch"]) == (2, 4)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_4.pth"]
    assert (tmp_path / LAST_CHECKPOINT).read_text() == str(tmp_path / "epoch_4.pth")
    assert torch.load(tmp_path / "epoch_4.pth", map_location="cpu", weights_only=False)["meta"]["epoch"] == 4


def test_the_previous_best_checkpoint_is_removed_after_the_new_one_is_saved(tmp_path):
    present_at_saves = []

    class Watch(Hook):
        def before_save_checkpoint(self, runner, checkpoint):
            present_at_saves.append(sorted(p.name for p in tmp_path.glob("best_*.pth")))

    runner, _ = make_runner(tmp_path, max_epochs=1, resume=False, hook=AtomicCheckpointHook.__name__,
                            save_best="score", rule="greater")  # fmt: skip
    runner.register_hook(Watch())
    (hook,) = [h for h in runner.hooks if isinstance(h, AtomicCheckpointHook)]
    hook.before_train(runner)
    for epoch, score in enumerate([0.5, 0.7]):
        runner.train_loop._epoch = epoch
        hook._save_best_checkpoint(runner, {"score": score})
    # mmengine's hook removes best_score_epoch_0.pth before it saves best_score_epoch_1.pth.
    assert present_at_saves == [[], ["best_score_epoch_0.pth"]]
    assert sorted(p.name for p in tmp_path.glob("best_*.pth")) == ["best_score_epoch_1.pth"]
