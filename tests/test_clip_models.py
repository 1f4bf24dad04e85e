"""Loading CLIP ResNets, and the registered backbone (V_a) and RoI shared head (V_b)."""

import shutil

import open_clip
import pytest
import torch
from mmcv.ops import RoIAlign
from mmdet.registry import MODELS

import clipgap_cli.models  # noqa: F401  (registers the components)
from clipgap_cli.clip import model as clip_model
from clipgap_cli.clip.model import clip_identity, default_pretrained, load_clip
from clipgap_cli.clip.split import v_a, v_b
from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import sha256_of
from clipgap_cli.models import CLIPResLayer4Head, CLIPResNetBackbone, ClipRoIFeatures

TINY = dict(name="RN-tiny", pretrained=None)


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- loading ------------------------------------------------------------------------------


def test_random_weights_are_the_same_whatever_the_global_seed():
    torch.manual_seed(123)
    first = clip_model._load.__wrapped__("RN-tiny", None, None, None)
    torch.manual_seed(456)
    second = clip_model._load.__wrapped__("RN-tiny", None, None, None)
    assert_same_state(first.state_dict(), second.state_dict())


def test_loading_does_not_consume_the_callers_random_stream():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    clip_model._load.__wrapped__("RN-tiny", None, None, None)
    assert torch.equal(torch.rand(3), expected)


def test_a_model_is_loaded_once_per_process_frozen_and_in_eval_mode():
    model = load_clip("RN-tiny", None)
    assert load_clip("RN-tiny", "none") is model
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_default_weights():
    assert default_pretrained("RN101") == "openai"
    assert default_pretrained("RN50") == "openai"
    assert default_pretrained("RN-tiny") is None


def test_identity_of_a_tag_and_of_random_weights():
    assert clip_identity("RN101", "openai") == {"model": "RN101", "pretrained": "openai", "sha256": None}
    assert clip_identity("RN-tiny", None) == {"model": "RN-tiny", "pretrained": None, "sha256": None}


def test_a_state_dict_file_loads_and_is_identified_by_its_hash(tmp_path):
    source = open_clip.create_model("RN-tiny")  # other random weights than the seeded ones
    file = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), file)
    copy = tmp_path / "elsewhere" / "same.pt"
    copy.parent.mkdir()
    shutil.copy(file, copy)

    loaded = load_clip("RN-tiny", str(file))
    assert_same_state(loaded.state_dict(), source.state_dict())
    identity = clip_identity("RN-tiny", file)
    assert identity == {"model": "RN-tiny", "pretrained": None, "sha256": sha256_of(file)}
    assert clip_identity("RN-tiny", copy) == identity


def test_a_file_rewritten_in_place_is_another_model(tmp_path):
    file = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("RN-tiny").state_dict(), file)
    first, first_identity = load_clip("RN-tiny", file), clip_identity("RN-tiny", file)
    torch.save(open_clip.create_model("RN-tiny").state_dict(), file)
    second, second_identity = load_clip("RN-tiny", file), clip_identity("RN-tiny", file)
    assert first_identity != second_identity
    assert not torch.equal(first.visual.conv1.weight, second.visual.conv1.weight)


def test_an_openai_style_torchscript_archive_loads(tmp_path):
    source = open_clip.create_model("RN-tiny")
    # OpenAI's RN50.pt / RN101.pt are scripted models whose attention mask is not a buffer.
    source.attn_mask = source._buffers.pop("attn_mask")
    file = tmp_path / "RN-tiny.pt"
    torch.jit.script(source).save(str(file))
    loaded = load_clip("RN-tiny", file)
    assert torch.equal(loaded.visual.conv1.weight, source.visual.conv1.weight)
    assert torch.equal(loaded.token_embedding.weight, source.token_embedding.weight)


@pytest.mark.parametrize(
    "name, pretrained, fragments",
    [
        ("RN999", None, ["unknown CLIP model 'RN999'", "RN101", "RN-tiny"]),
        ("ViT-B-32", None, ["'ViT-B-32' is not a ResNet", "RN50"]),
        ("RN-tiny", "openai", ["neither a pretrained tag of CLIP RN-tiny", "it has no pretrained tags"]),
        ("RN101", "laion2b", ["its tags are openai, yfcc15m"]),
        ("RN50", "openai", ["'openai' weights of CLIP RN50", "--pretrained /path/to/RN50.pt"]),
    ],
)
def test_unusable_models_and_weights_are_refused(name, pretrained, fragments):
    with pytest.raises(ClipgapError) as err:
        load_clip(name, pretrained)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    file = tmp_path / "weights.pt"
    file.write_text("not weights\n")
    with pytest.raises(ClipgapError, match="weights.pt is not a CLIP checkpoint"):
        load_clip("RN-tiny", file)


def test_weights_of_another_model_are_refused(tmp_path):
    file = tmp_path / "tiny.pt"
    torch.save(load_clip("RN-tiny", None).state_dict(), file)
    with pytest.raises(ClipgapError, match="does not hold weights of CLIP RN50"):
        load_clip("RN50", file)


# -- the registered components ------------------------------------------------------------


def build_backbone(**kwargs):
    return MODELS.build(dict(type="CLIPResNetBackbone", clip=TINY, **kwargs))


def build_head(**kwargs):
    return MODELS.build(dict(type="CLIPResLayer4Head", clip=TINY, **kwargs))


def test_components_build_from_configs_with_clips_weights():
    backbone, head = build_backbone(), build_head()
    assert isinstance(backbone, CLIPResNetBackbone) and isinstance(head, CLIPResLayer4Head)
    visual = load_clip("RN-tiny", None).visual
    assert_same_state(state(backbone.layer3), state(visual.layer3))
    assert_same_state(state(head.attnpool), state(visual.attnpool))
    assert (backbone.out_channels, head.roi_size, head.embed_dim, head.out_channels) == (256, 8, 64, 512)
    # The Runner calls init_weights() on the whole detector: it must keep CLIP's weights.
    backbone.init_weights()
    head.init_weights()
    assert_same_state(state(backbone.layer3), state(visual.layer3))
    assert_same_state(state(head.layer4), state(visual.layer4))


def test_backbone_gives_the_stride_16_layer3_map():
    backbone = build_backbone().eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        out = backbone(x)
    assert isinstance(out, tuple) and len(out) == 1
    assert out[0].shape == (2, 256, 6, 10)
    with torch.no_grad():
        assert torch.equal(out[0], v_a(load_clip("RN-tiny", None).visual, x))


PARTS = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2", "layer3"]


def frozen_parts(backbone):
    flags = {name: {p.requires_grad for p in getattr(backbone, name).parameters()} for name in PARTS}
    assert all(len(f) == 1 for f in flags.values()), "a part is partly frozen"
    return [name for name in PARTS if flags[name] == {False}]


def test_default_freezing_is_the_references_and_frozen_stages_get_no_gradient():
    backbone = build_backbone().train()
    assert frozen_parts(backbone) == PARTS[:8]  # stem, layer1, layer2; layer3 trains

    backbone(torch.randn(2, 3, 64, 64))[0].square().sum().backward()
    for name in PARTS[:8]:
        assert all(p.grad is None for p in getattr(backbone, name).parameters()), name
    grads = [p.grad for p in backbone.layer3.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("frozen_stages, frozen", [(-1, []), (0, PARTS[:6]), (1, PARTS[:7]), (3, PARTS)])
def test_frozen_stages(frozen_stages, frozen):
    assert frozen_parts(build_backbone(frozen_stages=frozen_stages)) == frozen


def test_frozen_stages_out_of_range():
    with pytest.raises(ValueError, match="frozen_stages must be -1..3"):
        build_backbone(frozen_stages=4)


def test_training_changes_the_copies_not_the_shared_model():
    backbone = build_backbone().train()
    shared = state(load_clip("RN-tiny", None).visual.layer3)
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    backbone(torch.randn(2, 3, 64, 64))[0].sum().backward()
    optimizer.step()
    trained = state(backbone.layer3)
    assert any(not torch.equal(trained[key], shared[key]) for key in shared)
    assert_same_state(state(load_clip("RN-tiny", None).visual.layer3), shared)


@pytest.mark.parametrize("build", [build_backbone, build_head])
def test_norm_eval(build):
    x = torch.randn(4, 3, 64, 64) if build is build_backbone else torch.randn(4, 256, 8, 8)

    # Default (the reference): BNs train, frozen stem included: running stats move.
    module = build().train()
    bn = next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    module(x)
    assert bn.training and not torch.equal(bn.running_mean, before)

    module = build(norm_eval=True).train()
    bn = next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    module(x)
    assert module.training and not bn.training
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("attnpool_form", ["token0", "all_tokens"])
def test_head_gives_the_region_embedding_and_the_pooled_layer4_feature(attnpool_form):
    head = build_head(attnpool_form=attnpool_form).eval()
    x = torch.randn(5, 256, 8, 8)
    with torch.no_grad():
        out = head(x)
        visual = load_clip("RN-tiny", None).visual
        f4 = visual.layer4(x)
    assert isinstance(out, ClipRoIFeatures)
    embedding, pooled = out
    assert embedding.shape == (5, 64) and pooled.shape == (5, 512)
    torch.testing.assert_close(embedding, visual.attnpool(f4))
    torch.testing.assert_close(pooled, f4.mean(dim=(2, 3)))


def test_head_refuses_an_unknown_attnpool_form():
    with pytest.raises(
        ValueError, match="attnpool_form must be one of .*'token0', 'all_tokens'.*got 'dense'"
    ):
        build_head(attnpool_form="dense")


def test_head_refuses_rois_of_the_wrong_size():
    with pytest.raises(ValueError, match="needs 8x8 RoI features.*output_size=8"):
        build_head()(torch.randn(1, 256, 14, 14))


@torch.no_grad()
def test_whole_image_roi_through_the_components_is_clips_image_embedding():
    backbone, head = build_backbone().eval(), build_head().eval()
    x = torch.randn(2, 3, 128, 128)
    (f,) = backbone(x)
    rois = torch.tensor([[0.0, 0, 0, 128, 128], [1.0, 0, 0, 128, 128]])
    # RoIAlign over the whole-image box samples exactly the cell centres (see test_clip_split).
    pooled = RoIAlign(output_size=8, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)(f, rois)
    embedding = head(pooled).embedding
    expected = v_b(load_clip("RN-tiny", None).visual, f)
    assert ((embedding - expected).norm() / expected.norm()).item() < 1e-5
