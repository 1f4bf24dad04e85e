"""The formats of clipgap's artifacts and their readers: text embeddings, offsets, tensors written
into configs, the resolved training config, the checkpoints and the exported bundles.

Stages write and read these; the registered models read the files their configs name. Each
reader refuses, in one sentence with the fix, a file that is missing or of another format.
Reads through a `Run` are verified against its manifest; reads by path are for configs.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import sha256_of
from clipgap_cli.rundir import OFFSETS, PRODUCERS, TEXT_EMBEDDINGS, TRAINED_CONFIG, WORK_DIR, Run

TEXT_EMBEDDINGS_FORMAT = 1
OFFSETS_FORMAT = 1  # the offset form (A_j), as every version of clipgap wrote it
STYLES_FORMAT = 2  # the style form (per-channel statistics at a stage), in the same file
BUNDLE_FORMAT = 1

# -- tensors written into a config -------------------------------------------------------------

# An exported model's config holds its class text embeddings and augmentation means itself.
# As nested lists of floats, LVIS's 1203 x 512 embeddings make a 21 MB config that mmengine,
# which parses a config's syntax tree several times, takes about 25 s to load; as float32
# bytes in base64 they make one 3 MB string, read at once, and every bit comes back.
TENSOR_KEY = "float32_base64"


def encode_tensor(tensor: torch.Tensor) -> dict[str, object]:
    """`{"float32_base64": ..., "shape": [...]}`: the tensor's float32 values, little-endian."""
    values = tensor.detach().cpu().float().numpy().astype("<f4")
    return {TENSOR_KEY: base64.b64encode(values.tobytes()).decode("ascii"), "shape": list(values.shape)}


def decode_tensor(value: Mapping | Sequence | torch.Tensor) -> torch.Tensor:
    """A float32 tensor from `encode_tensor`'s dict, nested lists of numbers, or a tensor."""
    if isinstance(value, Mapping) and TENSOR_KEY in value:
        data = np.frombuffer(base64.b64decode(value[TENSOR_KEY], validate=True), dtype="<f4")
        shape = tuple(value["shape"])
        if int(np.prod(shape)) != data.size:
            raise ValueError(f"an encoded tensor of shape {shape} holds {data.size} values")
        return torch.from_numpy(data.astype(np.float32)).reshape(shape)
    return torch.as_tensor(value, dtype=torch.float32)


# -- text embeddings (`prompts/text_embeddings.pt`) -------------------------------------------------


@dataclass(frozen=True)
class TextEmbeddings:
    """The text embeddings every later stage uses, float32 and L2-normalised, with the exact
    strings they encode and the CLIP model that encoded them."""

    source: torch.Tensor  # (D,): the source-domain prompt t_s
    targets: torch.Tensor  # (M, D): the target-domain prompts t_j, in file order
    classes: torch.Tensor  # (K, D): the class prompts, in class order
    source_prompt: str
    target_prompts: list[str]
    class_names: list[str]
    class_template: str
    class_prompts: list[str]  # class_template filled with each class name
    clip: dict[str, str | None]  # the CLIP identity, as in the manifest

    def to_dict(self) -> dict:
        """The artifact's content: tensors, strings, lists and dicts only (loads with weights_only=True)."""
        return {"format": TEXT_EMBEDDINGS_FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}


def load_text_embeddings(run: Run | Path | str) -> TextEmbeddings:
    """The verified text embeddings of a run (refused if missing, modified, or of another format)."""
    run = run if isinstance(run, Run) else Run.open(run)
    return read_text_embeddings(run.verified_path(TEXT_EMBEDDINGS))


def read_text_embeddings(path: Path) -> TextEmbeddings:
    """A text-embeddings file as `encode-prompts` writes it, by path (for configs that name it)."""
    data = _read(path, TEXT_EMBEDDINGS, TEXT_EMBEDDINGS_FORMAT, "text embeddings", "a text-embeddings file")
    del data["format"]
    return TextEmbeddings(**data)


def trained_classes(run: Run, checkpoint_rel: str | None, names: Sequence[str]) -> list[str]:
    """The classes a run's checkpoint was trained on: all of the run's but the novel classes
    its training recorded (a checkpoint from elsewhere: all)."""
    trained = run.artifact(checkpoint_rel) if checkpoint_rel else None
    novel = trained.options.get("novel_classes", []) if trained else []
    return [c for c in names if c not in novel]


# -- semantic augmentations (`augs/offsets.pt`) -----------------------------------------------------


def offsets_content(offsets: torch.Tensor, source_prompt: str, target_prompts: Sequence[str]) -> dict:
    """The offsets artifact's content for A (M, C, S, S): A, its spatial means (M, C), which
    the detector adds, and the prompts it was optimised for."""
    return {
        "format": OFFSETS_FORMAT,
        "offsets": offsets,
        "offset_means": offsets.mean(dim=(2, 3)),
        "source_prompt": source_prompt,
        "target_prompts": list(target_prompts),
    }


def styles_content(
    stage: str, means: torch.Tensor, stds: torch.Tensor, source_prompt: str, target_prompts: Sequence[str]
) -> dict:
    """The same artifact for the style form: the stage it acts at, each target prompt's
    per-channel means and standard deviations (M, C), and the prompts."""
    return {
        "format": STYLES_FORMAT,
        "form": "style",
        "stage": stage,
        "style_means": means,
        "style_stds": stds,
        "source_prompt": source_prompt,
        "target_prompts": list(target_prompts),
    }


def augmentation_form(content: Mapping) -> str:
    """`offset` or `style`: the form of an augmentation artifact's content."""
    return content.get("form", "offset")


def load_offsets(run: Run) -> dict:
    """The verified augmentation artifact (`augs/offsets.pt`): for the offset form `offsets`
    (M, C, S, S) and `offset_means` (M, C), for the style form `stage`, `style_means` and
    `style_stds` (M, C); the prompts."""
    return read_offsets(run.verified_path(OFFSETS))


def read_offsets(path: Path) -> dict:
    """An augmentation file as `optimize-augs` writes it, of either form, by path (for configs
    that name it)."""
    return _read(path, OFFSETS, (OFFSETS_FORMAT, STYLES_FORMAT), "semantic augmentations", "an offsets file")


def _read(path: Path, rel: str, version: int | tuple[int, ...], what: str, kind: str) -> dict:
    """The dict in the artifact file `path` (the run's `rel`), refused unless of format `version`
    (or one of them)."""
    stage = PRODUCERS[rel]
    versions = (version,) if isinstance(version, int) else version
    if not path.is_file():
        raise ClipgapError(f"no {what} at {path}; make them with `clipgap {stage}`")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") not in versions:
        formats = " or ".join(map(str, versions))
        raise ClipgapError(f"{path} is not {kind} of format {formats}; re-run `clipgap {stage} --force`")
    return data


# -- the training config and the checkpoints (`train/`) ----------------------------------------------


def run_config(run: Run) -> Path:
    """The verified config `train` resolved for the run (`train/clipgap_config.py`): the one its
    checkpoints were trained with."""
    return run.verified_path(TRAINED_CONFIG)


@dataclass(frozen=True)
class Checkpoint:
    """The weights to use: their path, their path in the run (None for a file outside it),
    their sha256, and the stem that names what is made of them (an evaluation's json)."""

    path: Path
    rel: str | None
    sha256: str

    @property
    def stem(self) -> str:
        return self.path.stem


def recorded_checkpoints(run: Run) -> list[str]:
    """The run's checkpoints, as `train` recorded them (paths in the run)."""
    return sorted(rel for rel in run.artifacts() if rel.startswith(f"{WORK_DIR}/") and rel.endswith(".pth"))


def find_checkpoint(run: Run, which: str) -> Checkpoint:
    """`best` (the best on the source's evaluation split), `last` (the highest iteration) or a
    path: a run's checkpoint is verified against the manifest, a file outside it taken as is."""
    if which in ("best", "last"):
        rel = recorded_checkpoint(run, which)
    else:
        path = Path(which)
        if not path.is_file():
            raise ClipgapError(f"--checkpoint {which}: no such file; use best, last or a checkpoint file")
        resolved, root = path.resolve(), run.root.resolve()
        rel = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None
        if rel not in recorded_checkpoints(run):
            return Checkpoint(path, None, sha256_of(path))
    return Checkpoint(run.path(rel), rel, run.verified(rel).sha256)


def recorded_checkpoint(run: Run, which: str) -> str:
    """The path in the run of its `best` or `last` checkpoint (not yet verified)."""
    recorded = recorded_checkpoints(run)
    if not recorded:
        raise ClipgapError(f"run directory {run.root} has no trained checkpoint; run `clipgap train` first")
    prefix = "best_" if which == "best" else "iter_"
    candidates = [rel for rel in recorded if Path(rel).name.startswith(prefix)]
    if not candidates:
        other = "last" if which == "best" else "best"
        raise ClipgapError(f"run directory {run.root} has no {which} checkpoint; pass --checkpoint {other}")
    return max(candidates, key=_iteration)


def _iteration(rel: str) -> int:
    match = re.search(r"iter_(\d+)\.pth$", rel)
    return int(match.group(1)) if match else -1


def read_checkpoint(path: Path) -> dict[str, Any]:
    """An mmengine checkpoint file's content (`state_dict`, `meta`, ...), refused with one line
    if the file is not one."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the user's own file
    except Exception as err:  # unpickling raises many types on a file that is not a checkpoint
        raise ClipgapError(f"{path} is not a checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ClipgapError(f"{path} is not an MMDetection checkpoint: it has no state_dict")
    return checkpoint


# -- bundles (`clipgap export`) -------------------------------------------------------------------

# The files of a bundle directory (`clipgap export`).
BUNDLE_INFO = "bundle.json"
BUNDLE_CONFIG = "config.py"
BUNDLE_WEIGHTS = "model.pth"
BUNDLE_README = "README.md"


@dataclass(frozen=True)
class Bundle:
    """An exported model: its directory and its `bundle.json`."""

    root: Path
    info: dict[str, Any]

    @property
    def config(self) -> Path:
        return self.root / BUNDLE_CONFIG

    @property
    def weights(self) -> Path:
        return self.root / BUNDLE_WEIGHTS

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])


def exported_info(path: Path) -> dict[str, Any]:
    """The json `export` wrote beside a model (a bundle's or an ONNX model's), with its
    "format"; one line if it cannot be read."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        info["format"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ClipgapError(f"{path} is corrupt; export the model again") from None
    return info


def load_bundle(path: Path) -> Bundle:
    """The bundle at `path`, after checking that this clipgap reads its format and that its
    files are the ones it was exported with."""
    info_path = Path(path) / BUNDLE_INFO
    if not info_path.is_file():
        raise ClipgapError(
            f"{path} is not a clipgap bundle: it has no {BUNDLE_INFO} (make one with `clipgap export`)"
        )
    info = exported_info(info_path)
    version = info["format"]
    if version != BUNDLE_FORMAT:
        made_by = (info.get("versions") or {}).get("clipgap", "another version")
        raise ClipgapError(
            f"{path} is a bundle of format {version} (clipgap {made_by}); this clipgap reads format "
            f"{BUNDLE_FORMAT}: export the model again with this clipgap, or install the one that made it"
        )
    bundle = Bundle(Path(path), info)
    for name, sha256 in info.get("files", {}).items():
        file = bundle.root / name
        if not file.is_file() or sha256_of(file) != sha256:
            raise ClipgapError(f"{file} is missing or was changed after export; export the model again")
    return bundle
