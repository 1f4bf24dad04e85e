"""The V_a / V_b split: V_b ∘ V_a is CLIP's image encoder, for every CLIP ResNet, also per RoI."""

import copy

import pytest
import torch
from mmcv.ops import RoIAlign

from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import V_A, V_B, VisualDims, v_a, v_b, visual_dims

MODELS = ["RN-tiny", "RN50", "RN101"]


def scrambled_clip(name):
    """A copy of the random-weights CLIP `name` whose BatchNorms (affine and running stats) are
    random too: fresh open_clip weights zero every block's last BN, which would turn the residual
    branches off and let a split that skipped them pass."""
    model = copy.deepcopy(load_clip(name, None))
    g = torch.Generator().manual_seed(0)
    for bn in model.visual.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def images(visual, n=2):
    size = visual.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_the_split_covers_the_whole_encoder_once():
    children = [name for name, _ in load_clip("RN-tiny", None).visual.named_children()]
    assert list(V_A + V_B) == children


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_v_b_after_v_a_is_clips_image_encoder(name):
    model = scrambled_clip(name)
    x = images(model.visual)
    dims = visual_dims(model.visual)
    f = v_a(model.visual, x)
    assert f.shape == (2, dims.layer3_channels, dims.roi_size, dims.roi_size)
    z = v_b(model.visual, f)
    assert z.shape == (2, dims.embed_dim)
    assert relative_error(z, model.encode_image(x)) < 1e-5


@pytest.mark.parametrize(
    "name, dims",
    [
        ("RN-tiny", VisualDims(layer3_channels=256, layer4_channels=512, embed_dim=64, image_size=128)),
        ("RN50", VisualDims(layer3_channels=1024, layer4_channels=2048, embed_dim=1024, image_size=224)),
        ("RN101", VisualDims(layer3_channels=1024, layer4_channels=2048, embed_dim=512, image_size=224)),
    ],
)
def test_dims_come_from_the_model(name, dims):
    assert visual_dims(load_clip(name, None).visual) == dims
    assert dims.roi_size == dims.image_size // 16


def whole_image_roi_features(f, image_size):
    """RoIAlign as the detector runs it (the reference's ROIAlignV2) over the whole-image box."""
    size = image_size // 16
    roi_align = RoIAlign(output_size=size, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
    rois = torch.tensor([[0.0, 0.0, 0.0, image_size, image_size]]).repeat(f.shape[0], 1)
    rois[:, 0] = torch.arange(f.shape[0])
    return roi_align(f, rois)


@pytest.mark.parametrize("name", ["RN-tiny", "RN50"])
@torch.no_grad()
def test_v_b_on_the_whole_image_roi_is_v_b_on_the_map(name):
    model = scrambled_clip(name)
    x = images(model.visual)
    f = v_a(model.visual, x)
    pooled = whole_image_roi_features(f, model.visual.image_size)
    # With aligned=True the box spans [-0.5, S - 0.5] in map coordinates, so each of the S x S
    # bins is one cell wide; sampling_ratio=0 then takes one sample per bin, at its centre,
    # which is exactly a cell centre: bilinear weights (1, 0), the cell's own value, up to
    # float rounding only.
    torch.testing.assert_close(pooled, f, rtol=1e-6, atol=1e-6)
    assert relative_error(v_b(model.visual, pooled), v_b(model.visual, f)) < 1e-5
