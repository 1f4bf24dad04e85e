"""Tensors written into a config as text: float32 bytes in base64, exact and quick to parse.

An exported model's config holds its class text embeddings and augmentation means itself.
As nested lists of floats, LVIS's 1203 x 512 embeddings make a 21 MB config that mmengine,
which parses a config's syntax tree several times, takes about 25 s to load; as base64 they
make one 3 MB string, read at once, and every bit comes back.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import numpy as np
import torch

KEY = "float32_base64"


def encode_tensor(tensor: torch.Tensor) -> dict[str, object]:
    """`{"float32_base64": ..., "shape": [...]}`: the tensor's float32 values, little-endian."""
    values = tensor.detach().cpu().float().numpy().astype("<f4")
    return {KEY: base64.b64encode(values.tobytes()).decode("ascii"), "shape": list(values.shape)}


def decode_tensor(value: Mapping | Sequence | torch.Tensor) -> torch.Tensor:
    """A float32 tensor from `encode_tensor`'s dict, nested lists of numbers, or a tensor."""
    if isinstance(value, Mapping) and KEY in value:
        data = np.frombuffer(base64.b64decode(value[KEY], validate=True), dtype="<f4")
        shape = tuple(value["shape"])
        if int(np.prod(shape)) != data.size:
            raise ValueError(f"an encoded tensor of shape {shape} holds {data.size} values")
        return torch.from_numpy(data.astype(np.float32)).reshape(shape)
    return torch.as_tensor(value, dtype=torch.float32)
