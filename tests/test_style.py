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


def style_file(tmp_path, stage="layer1", channels=None, prompts=3):
    """An augmentation file of the style form, as optimize-augs writes it, for RN-tiny's `stage`."""
    from clipgap_cli.artifacts import styles_content

    visual = load_clip("RN-tiny", None).visual
    channels = channels or getattr(visual, stage)[-1].bn3.num_features
    g = torch.Generator().manual_seed(2)
    means = torch.randn(prompts, channels, generator=g)
    stds = torch.rand(prompts, channels, generator=g) + 0.5
    path = tmp_path / "offsets.pt"
    torch.save(styles_content(stage, means, stds, "source", [f"target {j}" for j in range(prompts)]), path)
    return path, means, stds


def test_the_module_restyles_each_image_in_training_and_nothing_in_eval(tmp_path):
    from clipgap_cli.models.semantic_augmentation import SemanticAugmentation

    path, means, stds = style_file(tmp_path, channels=4)
    module = SemanticAugmentation(offsets=str(path), prob=1.0)
    assert (module.form, module.stage) == ("style", "layer1")
    f = torch.randn(6, 4, 5, 5) * 3 + 1
    module.eval()
    assert module((f,))[0] is f
    module.train()
    (styled,) = module((f,))
    got_mean, got_std = statistics(styled)
    for n in range(6):  # every image carries one of the styles' statistics
        j = int((got_mean[n] - means).abs().sum(1).argmin())
        torch.testing.assert_close(got_mean[n], means[j], atol=1e-4, rtol=0)
        torch.testing.assert_close(got_std[n], stds[j], atol=1e-2, rtol=1e-2)
    mixed = SemanticAugmentation(style_means=means.tolist(), style_stds=stds.tolist(), stage="layer1",
                                 prob=1.0, mix=True).train()  # fmt: skip
    (blend,) = mixed((f,))
    assert not torch.allclose(statistics(blend)[0], got_mean)
    with pytest.raises(ValueError, match="holds styles of layer1, not of layer2"):
        SemanticAugmentation(offsets=str(path), stage="layer2")
    with pytest.raises(ValueError, match="mix applies to the style form only"):
        SemanticAugmentation(offset_means=[[0.0, 1.0]], mix=True)


@pytest.mark.parametrize("detector", ["c4", "gridclip"])
def test_backbones_restyle_at_the_stage_in_training_only(tmp_path, detector):
    from clipgap_cli.models.clip_resnet import CLIPResNetBackbone
    from clipgap_cli.models.gridclip import GridCLIPBackbone

    path, _, _ = style_file(tmp_path, stage="layer1")
    clip = dict(name="RN-tiny", pretrained=None)
    augmentation = dict(type="SemanticAugmentation", offsets=str(path), prob=1.0)
    kind = CLIPResNetBackbone if detector == "c4" else GridCLIPBackbone
    torch.manual_seed(0)
    plain = kind(clip=clip, norm_eval=True)
    styled = kind(clip=clip, norm_eval=True, augmentation=augmentation)
    styled.load_state_dict(plain.state_dict(), strict=False)  # the style buffers are the file's
    x = torch.randn(2, 3, 64, 64)
    seen = []
    styled.layer2.register_forward_pre_hook(lambda module, args: seen.append(statistics(args[0])[0]))
    with torch.no_grad():
        for a, b in zip(plain.eval()(x), styled.eval()(x), strict=True):
            torch.testing.assert_close(a, b)  # eval: unchanged
        trained = styled.train()(x)
    assert not torch.allclose(trained[-1], plain.train()(x)[-1])
    means = read_style_means(path)
    for image_means in seen[-1]:  # what layer2 received in training: layer1's map, restyled
        assert torch.isclose(means, image_means, atol=1e-4).all(dim=1).any()


def read_style_means(path):
    from clipgap_cli.artifacts import read_offsets

    return read_offsets(path)["style_means"]


STYLE_C4 = "tiny/faster-rcnn_clip-tiny_c4_synth_style.py"
OFFSETS_C4 = "tiny/faster-rcnn_clip-tiny_c4_synth.py"


def test_optimize_augs_style_writes_styles_and_the_statistics_diagnostic(tiny_run, synth_data):
    import json

    from clipgap_cli.artifacts import augmentation_form, load_offsets
    from clipgap_cli.rundir import Run
    from clipgap_cli.stages.optimize_augs import optimize_augs

    result = optimize_augs(tiny_run, synth_data, form="style", stage="layer2", iters=3, crops_per_iter=6)
    assert (result.form, result.stage, len(result.losses)) == ("style", "layer2", 3)
    run = Run.open(tiny_run)
    content = load_offsets(run)
    assert augmentation_form(content) == "style" and content["stage"] == "layer2"
    visual = load_clip("RN-tiny", None).visual
    shape = (len(content["target_prompts"]), visual.layer2[-1].bn3.num_features)
    assert content["style_means"].shape == content["style_stds"].shape == shape
    report = json.loads(run.path("augs/report.json").read_text())
    assert (report["form"], report["stage"]) == ("style", "layer2")
    (domain,) = [d for d in report["target_domains"] if d["domain"] == "night_rainy"]
    assert domain["named"]["prompt"] == "an image taken on a rain night"
    assert set(domain["best"]) == {"prompt", "stage_mean", "stage_std", "layer3_mean", "layer3_std"}
    assert {"form": "style", "stage": "layer2", "bn_mode": "eval"}.items() <= run.artifact(
        "augs/offsets.pt"
    ).options.items()
    again = optimize_augs(tiny_run, synth_data, form="style", stage="layer2", iters=3, crops_per_iter=6)
    assert not again.changed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(form="paint"), "--form must be one of offset, style"),
        (dict(stage="layer1"), "--stage is the style form's: the offsets act at layer3"),
        (dict(form="style", stage="layer4"), "--stage must be one of layer1, layer2, layer3"),
        (dict(form="style", bn_mode="train"), "--form style uses CLIP's stored BatchNorm statistics"),
    ],
)
def test_optimize_augs_refuses_a_form_and_a_stage_that_differ(tiny_run, synth_data, kwargs, message):
    from clipgap_cli.errors import ClipgapError
    from clipgap_cli.stages.optimize_augs import optimize_augs

    with pytest.raises(ClipgapError, match=message):
        optimize_augs(tiny_run, synth_data, iters=1, crops_per_iter=2, **kwargs)


def test_a_style_run_trains_exports_and_is_refused_by_an_offsets_config(tiny_run, synth_data, tmp_path):
    from mmengine.config import Config

    from clipgap_cli.artifacts import load_offsets
    from clipgap_cli.errors import ClipgapError
    from clipgap_cli.rundir import Run
    from clipgap_cli.stages.export import export
    from clipgap_cli.stages.optimize_augs import optimize_augs
    from clipgap_cli.stages.train import Launch, resolve_config, train

    optimize_augs(tiny_run, synth_data, form="style", iters=2, crops_per_iter=6)
    with pytest.raises(ClipgapError, match="holds styles .* train with a _style config"):
        train(tiny_run, resolve_config(OFFSETS_C4), synth_data,
              launch=Launch(device="cpu"), max_iters=2)  # fmt: skip
    train(tiny_run, resolve_config(STYLE_C4), synth_data, launch=Launch(device="cpu"), max_iters=4)
    run = Run.open(tiny_run)
    trained = Config.fromfile(str(run.path("train/clipgap_config.py")))
    assert trained.model.backbone.augmentation.stage == "layer1" and trained.model.neck is None
    (last,) = [r for r in run.artifacts() if r.startswith("train/iter_")]
    state = torch.load(run.path(last), map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(state["backbone.augmentation.style_means"], load_offsets(run)["style_means"])
    bundle = export(tiny_run, tmp_path / "bundle", "last")
    exported = Config.fromfile(str(bundle.config)).model.backbone.augmentation
    assert exported.offsets is None and exported.stage == "layer1" and "style_stds" in exported


def test_an_offsets_file_as_clipgap_wrote_it_before_the_style_form_still_trains(tiny_run, synth_data):
    """Format 1 with no form or stage, in the file or in its manifest entry: the offsets
    artifact of every clipgap before the style form."""
    from clipgap_cli.rundir import OFFSETS, Run
    from clipgap_cli.stages.optimize_augs import optimize_augs
    from clipgap_cli.stages.train import Launch, resolve_config, train

    optimize_augs(tiny_run, synth_data, iters=1, crops_per_iter=2)
    run = Run.open(tiny_run)
    made = run.artifact(OFFSETS)
    assert not {"form", "stage"} & set(made.options)
    written = torch.load(run.path(OFFSETS), weights_only=True)
    offsets = torch.randn(written["offsets"].shape, generator=torch.Generator().manual_seed(0))
    old = {
        "format": 1,
        "offsets": offsets,
        "offset_means": offsets.mean(dim=(2, 3)),
        "source_prompt": written["source_prompt"],
        "target_prompts": written["target_prompts"],
    }
    run.write(OFFSETS, lambda path: torch.save(old, path), stage=made.stage, options=made.options,
              inputs=made.inputs, clip=made.clip)  # fmt: skip
    train(tiny_run, resolve_config(OFFSETS_C4), synth_data,
          launch=Launch(device="cpu"), max_iters=2)  # fmt: skip
    (last,) = [r for r in run.artifacts() if r.startswith("train/iter_")]
    state = torch.load(run.path(last), map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(state["neck.offset_means"], old["offset_means"])
