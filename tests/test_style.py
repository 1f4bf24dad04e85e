"""The style form of the semantic augmentations (PØDA's PIN): restyling, the encoder split at
a stage, and the optimisation of feature statistics against target embeddings."""

import pytest
import torch
import torch.nn.functional as F

from clipgap_cli.augmentation.style import (
    STAGES,
    embed_from,
    fit_styles,
    restyle,
    stage_features,
    statistics,
)
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import v_a, v_b


def test_restyle_gives_every_image_the_style_statistics():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 5, 8, 8, generator=g) * (torch.rand(1, 5, 1, 1, generator=g) * 4 + 0.5) + 2
    mean, std = torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.5
    got_mean, got_std = statistics(restyle(f, mean, std))
    torch.testing.assert_close(got_mean, mean.expand(3, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_std, std.expand(3, -1), atol=1e-3, rtol=1e-3)
    own_mean, own_std = statistics(f)
    torch.testing.assert_close(restyle(f, own_mean, own_std), f, atol=1e-4, rtol=1e-4)  # its own: unchanged


@pytest.mark.parametrize("stage", STAGES)
def test_the_encoder_split_at_any_stage_is_clip_s_image_encoder(stage):
    visual = load_clip("RN-tiny", None).visual.eval()
    x = torch.randn(2, 3, visual.image_size, visual.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = v_b(visual, v_a(visual, x))
        split = embed_from(visual, stage, stage_features(visual, stage, x))
    torch.testing.assert_close(split, whole, atol=1e-4, rtol=1e-4)


def test_the_optimisation_recovers_a_known_per_channel_affine_change():
    # A target domain that is the source with each channel scaled and shifted, seen through an
    # encoder whose embedding determines the statistics (a projection of each image's channel
    # means and stds, with a constant so that the direction fixes the scale): the fitted style
    # must move the source statistics to the target's.
    g = torch.Generator().manual_seed(0)
    channels, dim = 6, 24
    scale = torch.rand(channels, generator=g) * 2 + 0.5
    offset = torch.randn(channels, 1, 1, generator=g)
    source = torch.randn(64, channels, 8, 8, generator=g) * scale[:, None, None] + offset
    a, b = torch.rand(channels, generator=g) + 0.5, torch.randn(channels, generator=g)
    target = source * a[:, None, None] + b[:, None, None]
    projection = torch.randn(dim, 2 * channels + 1, generator=g)

    def embed(f):
        mean, std = statistics(f)
        return torch.cat([mean, std, torch.ones(len(f), 1)], dim=1) @ projection.T

    text = F.normalize(F.normalize(embed(target), dim=-1).mean(0), dim=0)[None]  # (1, D)
    batches = (source[torch.randint(64, (16,), generator=g)] for _ in range(600))
    means, stds, losses = fit_styles(embed, batches, text, lr=0.1)
    assert losses[-1] < 0.01 * losses[0]
    (ms, ss), (mt, st) = (tuple(s.mean(0) for s in statistics(f)) for f in (source, target))
    closed_mean = 1 - (mt - means[0]).norm() / (mt - ms).norm()
    closed_std = 1 - (st - stds[0]).norm() / (st - ss).norm()
    assert closed_mean > 0.9 and closed_std > 0.9, (closed_mean, closed_std)
    assert (stds >= 0).all()
