"""The paper's split of CLIP's ModifiedResNet image encoder: V = V_b ∘ V_a.

V_a (stem, layer1..layer3) maps an image to its stride-16 feature map, on which the
detector's RPN and RoIAlign run and to which the semantic augmentations A_j are added;
V_b (layer4, attnpool) maps a stride-16 map of image_size/16 cells to CLIP's image
embedding. `v_a` and `v_b` take any module that holds these parts under open_clip's names:
`model.visual` itself, or clipgap's backbone (V_a) and RoI head (V_b).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

STEM = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
V_A = (*STEM, "layer1", "layer2", "layer3")
V_B = ("layer4", "attnpool")


def v_a(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """V_a: images (N, 3, H, W), CLIP-normalised -> layer3 map (N, C3, H/16, W/16)."""
    for name in V_A:
        x = getattr(visual, name)(x)
    return x


def v_b(visual: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """V_b: layer3 map (N, C3, S, S) with S = image_size/16 -> CLIP image embedding (N, D), unnormalised.

    Attention pooling in its token-0 form (`attnpool_token0`): open_clip's result, less work.
    """
    return attnpool_token0(visual.attnpool, visual.layer4(f))


def attnpool_token0(attnpool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's `AttentionPool2d` computed for its output token alone: layer4 map (N, C, H, W) -> (N, D).

    attnpool attends from all H*W + 1 tokens but returns token 0 (the mean token) only, so
    only that token's query is needed. Per head h, with q_h its (scaled) query and the tokens
    x_t, the keys and values fold into it: q_h · (W_k x_t + b_k)_h = (W_k,h^T q_h) · x_t +
    q_h · b_k,h, and Σ_t p_t (W_v x_t + b_v)_h = W_v,h (Σ_t p_t x_t) + b_v,h. So no token is
    projected: per RoI the work is a few C x C products instead of 4 (H*W + 1) of them. Same
    result as `attnpool(x)` up to float rounding, in training and eval mode (attnpool has no
    dropout), and the same gradients.
    """
    n, c = x.shape[:2]
    heads = attnpool.num_heads
    head_dim = c // heads
    tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    tokens = tokens + attnpool.positional_embedding.to(x.dtype)  # (N, HW+1, C)
    query = attnpool.q_proj(tokens[:, 0]).view(n, heads, head_dim) * head_dim**-0.5  # (N, heads, d)
    key_weight = attnpool.k_proj.weight.view(heads, head_dim, c)
    folded = torch.einsum("nhd,hdc->nhc", query, key_weight)  # (N, heads, C)
    # The same for every token, so the softmax cancels it; kept so that the key bias is used,
    # as DistributedDataParallel requires of every trained parameter.
    key_bias = (query * attnpool.k_proj.bias.view(heads, head_dim)).sum(dim=-1, keepdim=True)  # (N, heads, 1)
    scores = torch.einsum("nhc,ntc->nht", folded, tokens) + key_bias  # (N, heads, HW+1)
    attention = scores.softmax(dim=-1)
    mixed = torch.einsum("nht,ntc->nhc", attention, tokens)  # (N, heads, C)
    value_weight = attnpool.v_proj.weight.view(heads, head_dim, c)
    values = torch.einsum("nhc,hdc->nhd", mixed, value_weight) + attnpool.v_proj.bias.view(heads, head_dim)
    return attnpool.c_proj(values.reshape(n, c))


def attnpool_dense(attnpool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """attnpool's value and output projections on every cell: layer4 map (N, C4, H, W) -> (N, D, H, W).

    The dense CLIP embedding of GridCLIP (MaskCLIP's reading of attnpool): attnpool's output
    is c_proj(Σ_t p_t v_proj(x_t + pos_t)), an attention-weighted average of the tokens'
    projections, since c_proj ∘ v_proj is affine and the weights p_t sum to 1. Projecting
    each cell alone (no query, no key, no pooling) gives one such embedding per cell. No
    positional embedding is added: the map is then a 1x1 convolution of layer4, the same for
    any image size, where the positional embedding fits only image_size/32 cells a side.
    `attnpool` is open_clip's `AttentionPool2d` or any module with its `v_proj` and `c_proj`.
    """
    tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C4)
    dense = attnpool.c_proj(attnpool.v_proj(tokens))  # (N, HW, D)
    return dense.transpose(1, 2).reshape(len(x), -1, *x.shape[-2:])


@dataclass(frozen=True)
class VisualDims:
    """The sizes of a ModifiedResNet that the detector and the augmentations depend on."""

    layer3_channels: int  # C3: channels of V_a's output (1024 for RN50/RN101)
    layer4_channels: int  # C4: channels of layer4's output (2048 for RN50/RN101)
    embed_dim: int  # D: CLIP's joint embedding (RN50 1024, RN101 512)
    image_size: int  # CLIP's input size (224 for RN50/RN101)

    @property
    def layer2_channels(self) -> int:
        """C2: channels of layer2's output (stride 8); each ResNet stage doubles them."""
        return self.layer3_channels // 2

    @property
    def roi_size(self) -> int:
        """S = image_size/16: the RoI and offset size whose layer4 output fits attnpool's positions."""
        return self.image_size // 16


def visual_dims(visual: nn.Module) -> VisualDims:
    """The `VisualDims` of open_clip's `model.visual` (a ModifiedResNet)."""
    return VisualDims(
        layer3_channels=visual.layer3[-1].bn3.num_features,
        layer4_channels=visual.layer4[-1].bn3.num_features,
        embed_dim=visual.output_dim,
        image_size=visual.image_size,
    )
