"""Text prompts: the prompts file format, the shipped defaults, and encoding them with CLIP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from clipgap_cli.errors import ClipgapError

SOURCE_PROMPT = "an image taken during the day"
CLASS_TEMPLATE = "a photo of a {}"
DEFAULT_PROMPTS_FILE = Path(__file__).with_name("default_prompts.txt")
"""CLIP the Gap's 15 Diverse Weather prompts, "an image taken on a {weather} {time}"."""


def read_prompts(path: Path) -> list[str]:
    """The target-domain prompts of a prompts file, in order.

    The file is UTF-8 text, one prompt a line; surrounding whitespace is stripped, and blank
    lines and lines whose first non-blank character is `#` are skipped. A file with no
    prompt, or with the same prompt twice, is refused.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ClipgapError(f"prompts file {path} does not exist") from None
    except OSError as err:
        raise ClipgapError(f"cannot read prompts file {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ClipgapError(f"{path} line {line} is not UTF-8 text; save the prompts file as UTF-8") from None
    prompts: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        prompt = line.strip()
        if not prompt or prompt.startswith("#"):
            continue
        if prompt in prompts:
            raise ClipgapError(
                f"{path} line {number} repeats the prompt {prompt!r} of line {prompts[prompt]}; "
                "each target prompt must be distinct"
            )
        prompts[prompt] = number
    if not prompts:
        raise ClipgapError(f"{path} has no prompts, only blank lines and # comments; write one prompt a line")
    return list(prompts)


def tokenize(model_name: str, texts: Sequence[str]) -> torch.Tensor:
    """CLIP tokens (N, context_length) of `texts`; refuses a text CLIP would silently truncate."""
    tokenizer = open_clip.get_tokenizer(model_name)
    for text in texts:
        length = len(tokenizer.encode(text)) + 2  # with the start and end tokens
        if length > tokenizer.context_length:
            raise ClipgapError(
                f"the prompt {text!r} is {length} tokens long, but CLIP reads at most "
                f"{tokenizer.context_length}; shorten it"
            )
    return tokenizer(list(texts))


@torch.no_grad()
def encode_texts(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP text embeddings of `tokens` (N, L): (N, D), float32, L2-normalised."""
    return F.normalize(model.encode_text(tokens).float(), dim=-1)
