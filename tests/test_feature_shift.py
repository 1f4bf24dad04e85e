"""The optimize-augs diagnostic: do the offsets move source features towards a target domain's?"""

import json

import pytest
import torch

from clipgap_cli.augmentation.feature_shift import channel_means, feature_shifts
from clipgap_cli.rundir import AUGS_REPORT, Run
from clipgap_cli.stages.optimize_augs import naming_prompt, optimize_augs

C, S = 32, 7


def test_a_known_channel_shift_is_found_closed_by_the_offsets_that_follow_it():
    torch.manual_seed(0)
    source = torch.randn(40, C, S, S)
    shift = torch.randn(C)
    target = torch.randn(40, C, S, S) * 0.01 + source + shift[:, None, None]  # the same scenes, shifted
    spatial = torch.randn(C, S, S)
    spatial -= spatial.mean(dim=(1, 2), keepdim=True)  # a pattern of mean 0 adds nothing on average
    orthogonal = torch.randn(C)
    orthogonal -= (orthogonal @ shift) / (shift @ shift) * shift
    offsets = torch.stack(
        [
            0.8 * shift[:, None, None] + spatial,  # most of the way there
            -shift[:, None, None].expand(C, S, S),  # the opposite way
            orthogonal[:, None, None].expand(C, S, S),  # sideways
            torch.zeros(C, S, S),  # nothing
        ]
    )
    towards, away, sideways, nothing = feature_shifts(
        channel_means(source), channel_means(target), offsets, ["towards", "away", "sideways", "nothing"]
    )
    gap = (channel_means(target) - channel_means(source)).norm().item()
    for s in (towards, away, sideways, nothing):
        assert s.distance_before == pytest.approx(gap)
    assert towards.closed == pytest.approx(0.8, abs=0.01) and towards.cosine == pytest.approx(1, abs=1e-3)
    assert towards.size == pytest.approx(0.8, abs=0.01)
    assert away.closed == pytest.approx(-1, abs=0.01) and away.cosine == pytest.approx(-1, abs=1e-3)
    assert sideways.closed < 0 and sideways.cosine == pytest.approx(0, abs=1e-3)
    assert nothing.closed == 0 and nothing.distance_after == pytest.approx(gap)


def test_the_prompt_that_names_a_domain():
    assert naming_prompt("night_rainy") == "an image taken on a rain night"
    assert naming_prompt("dusk_rainy") == "an image taken on a rain evening"
    assert naming_prompt("daytime_foggy") == "an image taken on a fog day"
    assert naming_prompt("night_sunny") == "an image taken at night"  # not among the 15 default prompts
    assert naming_prompt("clipart") is None


def test_optimize_augs_reports_every_target_domain(tiny_run, synth_data):
    result = optimize_augs(tiny_run, synth_data, iters=3, crops_per_iter=6, seed=0)
    domains = {d.domain: d for d in result.domains}
    assert list(domains) == ["night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy"]
    for d in result.domains:
        assert len(d.prompts) == 15 and 0 < d.images <= 16
        gaps = {s.distance_before for s in d.prompts}
        assert len(gaps) == 1 and gaps.pop() > 0  # one gap per domain, whatever the prompt
        assert d.best.closed == max(s.closed for s in d.prompts)
    assert domains["night_sunny"].named is None  # no default prompt names a clear night
    assert domains["night_rainy"].named.prompt == "an image taken on a rain night"
    report = json.loads(Run.open(tiny_run).verified_path(AUGS_REPORT).read_text())
    assert [d["domain"] for d in report["target_domains"]] == list(domains)
    assert report["target_domains"][2]["named"]["prompt"] == "an image taken on a rain night"


@pytest.mark.parametrize("bn_train", [True, False])
def test_what_v_b_sees_of_an_offsets_spatial_mean_depends_on_the_batch_norm_mode(bn_train):
    # The detector adds only mean(A_j). With batch statistics (the reference's --bn-mode train),
    # layer4's first BatchNorms subtract any offset that is the same at every position of every
    # crop, so V_b, and the objective, cannot see it; with stored statistics they can.
    import copy

    from clipgap_cli.clip.model import load_clip
    from clipgap_cli.clip.split import v_b, visual_dims

    visual = copy.deepcopy(load_clip("RN-tiny", None).visual).train(bn_train)
    dims = visual_dims(visual)
    torch.manual_seed(0)
    features = torch.randn(12, dims.layer3_channels, dims.roi_size, dims.roi_size).abs()
    mean = torch.zeros(1, dims.layer3_channels, 1, 1, requires_grad=True)
    shifted = v_b(visual, features + mean + torch.randn(dims.layer3_channels, 1, 1))
    shifted.sum().backward()
    with torch.no_grad():
        moved = (shifted - v_b(visual, features)).abs().max().item()
    if bn_train:
        assert moved < 1e-3 and mean.grad.abs().max() < 1e-3
    else:
        assert moved > 0.1 and mean.grad.abs().max() > 0.1
