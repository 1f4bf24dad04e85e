"""Fixes the MMDetection stack needs on current torch and setuptools, in one place.

Applied once, on import of `clipgap_cli`, before any Runner or config is built. Each fix
names its upstream issue; delete it when a released mmengine carries the fix.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os.path as osp
from multiprocessing.pool import ThreadPool
from pathlib import Path

import mmdet.evaluation.functional.mean_ap
import mmdet.models.dense_heads.rpn_head
import mmengine.config.config
import mmengine.hub.hub
import mmengine.utils
import mmengine.utils.package_utils
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import CheckpointLoader

from clipgap_cli.io import atomic_write

ATOMIC_BACKEND = "clipgap_atomic_local"  # `backend_args=dict(backend=ATOMIC_BACKEND)`
LAST_CHECKPOINT = "last_checkpoint"  # in mmengine's work directory: the path of the newest checkpoint


# torch >= 2.6 loads with weights_only=True unless told otherwise, and mmengine 0.10.7's
# local loader does not say: every mmengine checkpoint (its message_hub pickles a
# HistoryBuffer) then fails to load, so `resume` and `load_from` break with
# "Weights only load failed ... Unsupported global: mmengine.logging.history_buffer.
# HistoryBuffer". open-mmlab/mmengine#1655; fixed on mmengine main by #1670, unreleased.
# Local checkpoints are the user's own files, trusted as mmengine always trusted them.
# (mmengine logs the loader's name from its 11th character: "local_trusted".)
@CheckpointLoader.register_scheme(prefixes="", force=True)
def load_from_local_trusted(filename: str, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return torch.load(filename, map_location=map_location, weights_only=False)


# setuptools 82 removed pkg_resources, which mmengine 0.10.7's is_installed and
# get_installed_path import: every `_base_ = 'mmdet::...'` config then fails with
# "No module named 'pkg_resources'". open-mmlab/mmengine#1676 replaced it with importlib on
# main, unreleased. These are the importlib equivalents, bound wherever mmengine imported
# the originals by name.
def is_installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    module = package
    try:
        top_level = importlib.metadata.distribution(package).read_text("top_level.txt")
        if top_level and top_level.split()[0] != package:
            module = top_level.split()[0]
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise importlib.metadata.PackageNotFoundError(package)
    return osp.dirname(spec.origin)


for _module in (mmengine.utils.package_utils, mmengine.utils, mmengine.config.config, mmengine.hub.hub):
    for _name, _fix in (("is_installed", is_installed), ("get_installed_path", get_installed_path)):
        if hasattr(_module, _name):
            setattr(_module, _name, _fix)


# mmdet 3.3's eval_map, which VOCMetric calls with a hard-coded nproc=4, forks a
# multiprocessing Pool for every evaluation of more than one image. Forking a process that
# already runs torch's (and gloo's) threads can leave the children deadlocked, and
# evaluation hangs (open-mmlab/mmrotate#45; the advice there, nproc=1, is not reachable
# through VOCMetric). A thread pool computes the same per-image TP/FP lists without forking.
mmdet.evaluation.functional.mean_ap.Pool = ThreadPool


# mmcv 2.1's nms reads boxes as float (its CPU and CUDA kernels alike), and mmdet 3.3 builds
# the RPN's anchors in the dtype of its scores. Under bfloat16 autocast (AmpOptimWrapper with
# dtype='bfloat16') the RPN's outputs are bf16, so proposals fail with "expected scalar type
# Float but found BFloat16", and anchors would round to bf16's 8 significant bits (4 px steps
# at 512-1024 px). mmdet supports fp16 AMP only (mmengine#960 reports other mmdet models
# failing under bf16). The RPN's outputs in float32 keep anchors and proposals exact; its
# convolution still runs in bf16. A no-op without autocast.
_rpn_forward_single = mmdet.models.dense_heads.rpn_head.RPNHead.forward_single


def rpn_forward_single_float32(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cls_score, bbox_pred = _rpn_forward_single(self, x)
    return cls_score.float(), bbox_pred.float()


mmdet.models.dense_heads.rpn_head.RPNHead.forward_single = rpn_forward_single_float32


# mmengine 0.10.7's LocalBackend.put opens the checkpoint's final name for writing and then
# writes it: a training killed during a save (minutes for a large model) leaves a truncated
# `iter_N.pth` that resume and evaluation fail on. CheckpointHook saves through the backend
# its `backend_args` name, so this one, set by `train` for every config, writes each
# checkpoint to a temporary sibling and renames it into place, as the run directory's
# artifacts are written.
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, writing each file whole or not at all."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        atomic_write(Path(filepath), lambda tmp: tmp.write_bytes(obj))

    def put_text(self, obj: str, filepath: str | Path, encoding: str = "utf-8") -> None:
        atomic_write(Path(filepath), lambda tmp: tmp.write_text(obj, encoding=encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


# mmengine 0.10.7's CheckpointHook, with `max_keep_ckpts`, removes the oldest kept checkpoint
# *before* it saves the next one, removes the previous best checkpoint before it saves the new
# best, and writes `last_checkpoint` with a plain open(): a training killed during a save with
# `max_keep_ckpts=1` is left with no whole checkpoint, and one killed while it writes
# `last_checkpoint` with a truncated path. This hook saves first, then points
# `last_checkpoint` at the new checkpoint (atomically), then removes what the new one
# replaces. `train` puts it in place of every stock CheckpointHook.
@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook that never removes a checkpoint before its successor is whole."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        # CheckpointHook._save_checkpoint_with_step, with the removal moved to the end.
        replaced = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                replaced = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        atomic_write(Path(runner.work_dir) / LAST_CHECKPOINT, lambda tmp: tmp.write_text(self.last_ckpt))
        if replaced is not None:
            self._remove(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(replaced)))

    def _save_best_checkpoint(self, runner, metrics):
        # mmengine's, with the previous best checkpoints hidden from it (it would remove them
        # first) and removed here once their successors are saved.
        if not self.save_best:
            return
        single = len(self.key_indicators) == 1
        previous = {None: self.best_ckpt_path} if single else dict(self.best_ckpt_path_dict)
        if single:
            self.best_ckpt_path = None
        else:
            self.best_ckpt_path_dict = dict.fromkeys(previous)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            current = {None: self.best_ckpt_path} if single else self.best_ckpt_path_dict
            replaced = [old for key, old in previous.items() if old and current[key] not in (None, old)]
            kept = {key: current[key] or old for key, old in previous.items()}
            if single:
                self.best_ckpt_path = kept[None]
            else:
                self.best_ckpt_path_dict = kept
        if is_main_process():
            for path in replaced:
                self._remove(path)

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # deepspeed saves a checkpoint as a directory
            self.file_backend.rmtree(path)
