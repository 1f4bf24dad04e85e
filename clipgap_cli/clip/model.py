"""Loading a CLIP ResNet from open_clip by name and weights, and the identity a run records for it.

Weights are an open_clip pretrained tag (`RN101` + `openai`), clipgap's own shipped weights
(`RN-synth` + `synth`), a local checkpoint file, or none. "None" means random weights drawn
under a fixed seed, so every stage that loads `RN-tiny` without weights, in any process,
gets the very same model.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import open_clip
import torch
from open_clip.factory import load_state_dict

from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import sha256_of

RANDOM_WEIGHTS_SEED = 0
WEIGHTS_DIR = Path(__file__).parent / "weights"
# Weights shipped inside the package, by (model, tag): made by `clipgap clip pretrain`.
SHIPPED = {("RN-synth", "synth"): WEIGHTS_DIR / "RN-synth.pt"}
DEFAULT = "default"
"""`pretrained=DEFAULT`: the model's default weights (`default_pretrained`)."""

_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

# Integer entries of OpenAI's TorchScript archives that are not weights (open_clip drops them too).
_OPENAI_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


def resnet_models() -> list[str]:
    """The open_clip model names whose image encoder is a ModifiedResNet (RN50, RN101, ..., RN-tiny)."""
    return [name for name in open_clip.list_models() if _is_resnet(name)]


def default_pretrained(name: str) -> str | None:
    """`openai` for a model that has OpenAI weights (RN50, RN101, ...), `synth` for RN-synth,
    else None (random weights)."""
    if "openai" in open_clip.list_pretrained_tags_by_model(name):
        return "openai"
    return next((tag for model, tag in SHIPPED if model == name), None)


def clip_identity(name: str, pretrained: str | Path | None) -> dict[str, str | None]:
    """What a run records as the CLIP model: `{"model", "pretrained", "sha256"}`.

    A tag gives `{"model": "RN101", "pretrained": "openai", "sha256": None}`; shipped weights
    give their tag and sha256 (`RN-synth`, `synth`, ...); a local file gives `pretrained: None`
    and the file's sha256, so the same file at another path is the same model; no weights
    give `pretrained: None, sha256: None`.
    """
    tag, file = _resolve(name, pretrained)
    return {"model": name, "pretrained": tag, "sha256": _sha256(file)}


def load_clip(name: str, pretrained: str | Path | None = DEFAULT) -> open_clip.CLIP:
    """The CLIP model `name` with weights `pretrained`: a tag, a checkpoint file, None / "none",
    or by default the model's default weights (`openai` for RN101, `synth` for RN-synth).

    Loaded once per process and shared (the backbone, the RoI head and the stages all ask
    for it), so it comes frozen and in eval mode: copy the parts you train
    (`copy.deepcopy(model.visual.layer4)`), never modify it in place.
    """
    tag, file = _resolve(name, pretrained)
    return _load(name, tag, file, _sha256(file))


def load_run_clip(
    identity: Mapping[str, str | None], pretrained: str | Path | None = None
) -> tuple[open_clip.CLIP, dict[str, str | None]]:
    """The CLIP model a run's artifacts were made with (`identity`), and the identity of what
    was loaded, for `Run.check_clip`.

    A tag, shipped weights or random weights are named by the identity itself. A local
    weights file is not (a run records only its sha256), so it must be passed as `pretrained`.
    """
    name = identity["model"]
    if pretrained is None:
        if identity.get("sha256") and not identity.get("pretrained"):
            raise ClipgapError(
                f"this run's CLIP {name} weights came from a local file (sha256 {identity['sha256'][:12]}); "
                "pass the same file with --pretrained"
            )
        pretrained = identity.get("pretrained")
    return load_clip(name, pretrained), clip_identity(name, pretrained)


@cache
def _load(name: str, tag: str | None, file: Path | None, sha256: str | None) -> open_clip.CLIP:
    """Keyed by the file's content too: a file rewritten in place is another model."""
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        # Random weights come from a fixed seed, in a forked RNG so callers' streams stay put.
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        try:
            model = new_model(name, None if file else tag)
        except RuntimeError:
            if tag is None:
                raise
            repo = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").rstrip("/") or "its URL"
            raise ClipgapError(
                f"could not get the {tag!r} weights of CLIP {name}: they are not in the local Hugging Face "
                f"cache and downloading them from {repo} failed; pass a local weights file instead: "
                f"--pretrained /path/to/{name}.pt"
            ) from None
    if file is not None:
        _load_file(model, name, file)
    return model.eval().requires_grad_(False)


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's input from RGB images (N, 3, H, W) in [0, 255]: scaled to [0, 1], minus open_clip's
    mean, over its std."""
    return (pixels / 255 - _MEAN) / _STD


def new_model(name: str, tag: str | None = None) -> open_clip.CLIP:
    """A fresh, trainable open_clip model `name`: open_clip's weights `tag`, or random weights
    from torch's current random state."""
    with _quiet_open_clip():
        return open_clip.create_model(
            name, pretrained=tag, force_quick_gelu=_quick_gelu(name, tag), require_pretrained=bool(tag)
        )


def _resolve(name: str, pretrained: str | Path | None) -> tuple[str | None, Path | None]:
    """`(tag, None)`, `(shipped tag, its file)`, `(None, absolute file)` or `(None, None)`, after
    checking the model name; `pretrained=DEFAULT` is the model's default weights."""
    if name not in open_clip.list_models():
        raise ClipgapError(f"unknown CLIP model {name!r}; choose one of {', '.join(resnet_models())}")
    if not _is_resnet(name):
        raise ClipgapError(
            f"CLIP model {name!r} is not a ResNet: clipgap splits a ModifiedResNet image encoder "
            f"into V_a and V_b; choose one of {', '.join(resnet_models())}"
        )
    if isinstance(pretrained, str) and pretrained == DEFAULT:
        pretrained = default_pretrained(name)
    if pretrained is None or str(pretrained).lower() == "none":
        return None, None
    shipped = SHIPPED.get((name, str(pretrained)))
    if shipped is not None:
        if not shipped.is_file():
            raise ClipgapError(
                f"the {pretrained!r} weights of CLIP {name} are missing from the installation ({shipped}); "
                "reinstall clipgap, or make them with `clipgap clip pretrain`"
            )
        return str(pretrained), shipped
    tags = open_clip.list_pretrained_tags_by_model(name)
    if str(pretrained) in tags:
        return str(pretrained), None
    file = Path(pretrained).expanduser()
    if file.is_file():
        return None, file.resolve()
    tags = tags + [t for m, t in SHIPPED if m == name]  # named in the error, though resolved above
    known = f"its tags are {', '.join(tags)}" if tags else "it has no pretrained tags"
    raise ClipgapError(
        f"pretrained weights {str(pretrained)!r} are neither a pretrained tag of CLIP {name} ({known}) "
        "nor an existing file; pass a tag, a weights file, or none for random weights"
    )


def _load_file(model: open_clip.CLIP, name: str, file: Path) -> None:
    # torch.load and safetensors raise many types on a file that is not a checkpoint, and a
    # checkpoint that is not a dict of weights fails on its first `.items()`.
    try:
        state_dict = _read_weights(file)
    except Exception as err:
        raise ClipgapError(
            f"{file} is not a CLIP checkpoint (a PyTorch, TorchScript or safetensors file of weights): "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 200 else detail[:200] + "…"
        raise ClipgapError(
            f"{file} does not hold weights of CLIP {name} ({detail}); "
            "pass the --clip model the file was made for"
        ) from None


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # torch.load warns before refusing a TorchScript archive; the refusal is handled below.
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            return load_state_dict(str(file), weights_only=True)
    except RuntimeError as err:
        if "TorchScript" not in str(err):
            raise
    # OpenAI's own RN50.pt / RN101.pt are TorchScript archives, which torch.load refuses with
    # weights_only=True; torch.jit.load reads them without unpickling arbitrary Python objects.
    state_dict = torch.jit.load(file, map_location="cpu").state_dict()
    return {key: value for key, value in state_dict.items() if key not in _OPENAI_NON_WEIGHTS}


def _is_resnet(name: str) -> bool:
    # open_clip builds a ModifiedResNet exactly when vision_cfg.layers is a list of block counts.
    return isinstance(open_clip.get_model_config(name)["vision_cfg"].get("layers"), list | tuple)


def _quick_gelu(name: str, tag: str | None) -> bool:
    """Whether the text tower uses QuickGELU: as the tag's weights were trained; for a file or
    random weights, as the model's published weights were (every CLIP ResNet's: QuickGELU, as
    OpenAI trained them), so that one model name is one architecture."""
    tags = [tag] if tag else open_clip.list_pretrained_tags_by_model(name)
    return any(open_clip.get_pretrained_cfg(name, t).get("quick_gelu", False) for t in tags)


def _sha256(file: Path | None) -> str | None:
    if file is None:
        return None
    stat = file.stat()
    return _sha256_of_version(file, stat.st_mtime_ns, stat.st_size)


@cache
def _sha256_of_version(file: Path, mtime_ns: int, size: int) -> str:
    # Hashing RN101's 300 MB takes a second; each stage asks for the identity more than once.
    return sha256_of(file)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else "no details"


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's own log records: it logs through the root logger what clipgap reports
    itself (random weights in the summary, a failed download as one error line)."""
    root = logging.getLogger()
    prefix = str(Path(open_clip.__file__).parent)

    def outside_open_clip(record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(prefix)

    root.addFilter(outside_open_clip)
    try:
        yield
    finally:
        root.removeFilter(outside_open_clip)
