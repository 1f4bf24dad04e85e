"""GridCLIP: the dense CLIP embeddings, the text-aligned dense head, the image-level alignment,
its configs, and the stages (train in one and two processes, evaluate) on the tiny model."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_one_line_error, logged_losses
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.structures import InstanceData
from typer.testing import CliRunner

import clipgap_cli.models  # noqa: F401  (registers the components)
from clipgap_cli.artifacts import load_text_embeddings
from clipgap_cli.cli import app
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import attnpool_dense, v_a, v_b
from clipgap_cli.data.spec import load_spec
from clipgap_cli.errors import ClipgapError
from clipgap_cli.models import GridCLIPBackbone, GridCLIPHead
from clipgap_cli.models.gridclip import image_alignment_loss, largest_regions, pooled_regions
from clipgap_cli.rundir import OFFSETS, TEXT_EMBEDDINGS, WORK_DIR, Run
from clipgap_cli.stages.encode_prompts import encode_prompts
from clipgap_cli.stages.optimize_augs import optimize_augs
from clipgap_cli.stages.train import CONFIGS, DETECTORS, compose_config

TINY = "tiny/gridclip_clip-tiny_fpn_synth.py"
TINY_AUG = "tiny/gridclip_clip-tiny_fpn_synth_aug.py"
TINY_CLIP = dict(name="RN-tiny", pretrained=None)
DOMAINS = ["daytime_clear", "night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy"]


@pytest.fixture(scope="module")
def visual():
    return load_clip("RN-tiny", None).visual


# -- dense CLIP embeddings -----------------------------------------------------------------


def layer4_map(visual, cells):
    """A layer4 map (2, C4, S, S) at attnpool's own size S = image_size/32: `cells` (2, C4)
    repeated at every position, or random if None."""
    side = visual.image_size // 32
    channels = visual.attnpool.v_proj.in_features
    if cells is None:
        return torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    return cells[:, :, None, None].expand(-1, -1, side, side).contiguous()


def test_on_a_uniform_map_each_cell_embeds_as_attnpool_without_its_positional_embedding(visual):
    # attnpool(x) = c_proj(Σ_t p_t v_proj(x_t + pos_t)) with Σ_t p_t = 1, so on a map whose
    # tokens are all u it is c_proj(v_proj(u + Σ_t p_t pos_t)): every cell's dense embedding
    # c_proj(v_proj(u)) exactly when the positions add nothing, and not otherwise.
    u = torch.randn(2, visual.attnpool.v_proj.in_features, generator=torch.Generator().manual_seed(1))
    x = layer4_map(visual, u)
    dense = attnpool_dense(visual.attnpool, x)  # (2, D, S, S)
    assert dense.shape == (2, visual.output_dim, *x.shape[-2:])
    assert torch.allclose(dense, dense[:, :, :1, :1].expand_as(dense))

    no_positions = copy.deepcopy(visual.attnpool)
    no_positions.positional_embedding.zero_()
    assert torch.allclose(dense[:, :, 0, 0], no_positions(x), atol=1e-5)
    # With CLIP's positional embedding the pooled output moves off the cells' embedding.
    assert (dense[:, :, 0, 0] - visual.attnpool(x)).abs().max() > 1e-2


def test_with_uniform_attention_attnpool_is_the_mean_of_the_dense_embeddings(visual):
    # The pooled grid of the image-level alignment: a zero query attends uniformly, and then
    # attnpool averages the tokens' projections, the mean token's being the cells' mean.
    uniform = copy.deepcopy(visual.attnpool)
    uniform.positional_embedding.zero_()
    uniform.q_proj.weight.zero_()
    uniform.q_proj.bias.zero_()
    x = layer4_map(visual, None)
    dense = attnpool_dense(visual.attnpool, x)
    whole = [(n, 0, 0, x.shape[-1] * 32, x.shape[-2] * 32) for n in range(len(x))]
    assert torch.allclose(pooled_regions(dense, whole, stride=32), uniform(x), atol=1e-5)


def test_the_backbone_starts_as_clip_and_trains_from_layer2(visual):
    backbone = GridCLIPBackbone(TINY_CLIP).train()
    images = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(2))
    layer2, layer3, dense = backbone(images)
    assert [f.shape[-1] for f in (layer2, layer3, dense)] == [20, 10, 5]
    assert [f.shape[1] for f in (layer2, layer3, dense)] == list(backbone.out_channels) == [128, 256, 64]
    with torch.no_grad():
        expected = attnpool_dense(visual.attnpool, visual.layer4(v_a(visual, images)))
    assert torch.allclose(dense, expected, atol=1e-5)  # norm_eval: CLIP's BatchNorm statistics
    trained = {n.split(".")[0] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trained == {"layer2", "layer3", "layer4", "attnpool"}
    assert set(backbone.attnpool) == {"v_proj", "c_proj"}


# -- the dense head: grid-level alignment, new vocabularies --------------------------------


def tiny_head(class_embeddings):
    head = GridCLIPHead(
        num_classes=len(class_embeddings), in_channels=16, feat_channels=16, stacked_convs=1,
        embed_dim=8, class_embeddings=class_embeddings, norm_cfg=None,
    )  # fmt: skip
    head.init_weights()
    return head.eval()


def test_head_scores_by_cosine_over_temperature_and_changes_vocabulary():
    g = torch.Generator().manual_seed(3)
    trained = torch.randn(4, 8, generator=g)
    head = tiny_head(trained.tolist())
    levels = [torch.randn(1, 16, 6, 6, generator=g), torch.randn(1, 16, 3, 3, generator=g)]
    with torch.no_grad():
        scores, _, _ = head(levels)
    assert [s.shape[1] for s in scores] == [4, 4] and head.cls_out_channels == 4
    embedding = torch.randn(2, 8, 3, 3, generator=g)
    cosine = torch.nn.functional.cosine_similarity(embedding[:, None], trained[None, :, :, None, None], dim=2)
    assert torch.allclose(head.text_logits(embedding), cosine / 0.07 + head.bias, atol=1e-5)
    assert head.bias.item() == pytest.approx(-4.595, abs=1e-3)  # the focal loss prior 0.01

    # Two of the trained classes, swapped, and one new class: scores follow, labels index them.
    new = torch.cat([trained[[2, 0]], torch.randn(1, 8, generator=g)])
    head.set_vocabulary(new)
    with torch.no_grad():
        new_scores, _, _ = head(levels)
    assert head.num_classes == head.cls_out_channels == 3
    assert torch.allclose(new_scores[0][:, :2], scores[0][:, [2, 0]], atol=1e-5)
    assert set(head.state_dict()) >= {"class_embeddings", "bias"} and "vocabulary" not in head.state_dict()
    head.set_vocabulary(None)
    with torch.no_grad():
        assert torch.equal(head(levels)[0][0], scores[0])
    assert head.num_classes == 4
    with pytest.raises(ValueError, match=r"must be \(K, 8\)"):
        head.set_vocabulary(torch.randn(3, 5))


# -- image-level alignment -----------------------------------------------------------------


def test_alignment_loss_is_zero_only_when_aligned_and_never_reaches_the_teacher():
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(3, 16, generator=g).requires_grad_()
    assert image_alignment_loss(teacher.detach().clone(), teacher).item() == pytest.approx(0, abs=1e-6)
    assert image_alignment_loss(2.5 * teacher.detach(), teacher).item() == pytest.approx(0, abs=1e-6)
    student = torch.randn(3, 16, generator=g).requires_grad_()
    loss = image_alignment_loss(student, teacher)
    assert loss.item() > 0.1
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    nearly = teacher.detach() + 0.01 * torch.randn(3, 16, generator=g)
    assert 0 < image_alignment_loss(nearly, teacher).item() < loss.item()


def tiny_model(**changes):
    register_all_modules()
    cfg = Config.fromfile(str(CONFIGS / TINY))
    cfg.model.bbox_head.class_embeddings = torch.randn(
        7, 64, generator=torch.Generator().manual_seed(5)
    ).tolist()
    cfg.merge_from_dict({f"model.{key}": value for key, value in changes.items()})
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def batch(shapes=((128, 160), (112, 128))):
    """Two padded images (2, 3, 128, 160) of the given unpadded sizes, one box each."""
    g = torch.Generator().manual_seed(6)
    samples = []
    for h, w in shapes:
        sample = DetDataSample(
            metainfo=dict(img_shape=(h, w), batch_input_shape=(128, 160), scale_factor=(1, 1))
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[10.0, 12, 70, 90]]), labels=torch.tensor([2])
        )
        samples.append(sample)
    return torch.randn(2, 3, 128, 160, generator=g), samples


def test_the_teacher_is_loaded_for_the_loss_only_and_gets_no_gradient(visual):
    model = tiny_model()
    images, samples = batch()
    model.eval()
    with torch.no_grad():
        model.predict(images, samples)
    assert model._teacher is None, "inference never loads the teacher"

    model.train()
    losses = model.loss(images, samples)
    assert losses["loss_image_alignment"] > 0
    sum(losses.values()).backward()
    assert model._teacher is visual, "the shared, cached CLIP model on the CPU"
    assert all(p.grad is None and not p.requires_grad for p in visual.parameters())
    assert not any(k.startswith("_teacher") for k in model.state_dict())
    assert {id(p) for p in model.parameters()}.isdisjoint(id(p) for p in visual.parameters())
    # DistributedDataParallel (find_unused_parameters=False) fails on a trained parameter without one.
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []

    # The teacher embeds each whole image, unpadded, at CLIP's input size.
    side = visual.image_size
    square = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(7))
    padded = torch.nn.functional.pad(square, (0, 32, 0, 16))
    with torch.no_grad():
        expected = v_b(visual, v_a(visual, square))
    assert torch.allclose(model.teacher_embedding(padded, [(0, 0, 0, side, side)]), expected, atol=1e-5)


def test_regions_align_their_cells_with_the_teachers_embedding_of_their_crop(visual):
    dense = torch.randn(2, 64, 4, 5, generator=torch.Generator().manual_seed(8))
    # Cells of 32 px: x 40..100 overlaps columns 1..3, y 0..20 row 0; a 4 px box still has its cell.
    regions = [(1, 40.0, 0.0, 100.0, 20.0), (0, 70.0, 70.0, 74.0, 74.0)]
    pooled = pooled_regions(dense, regions, stride=32)
    assert torch.allclose(pooled[0], dense[1, :, 0:1, 1:4].mean(dim=(1, 2)))
    assert torch.allclose(pooled[1], dense[0, :, 2, 2])

    model = tiny_model(image_alignment=dict(regions_per_image=1)).train()
    images, samples = batch()
    assert largest_regions(samples, 1) == [(0, 10.0, 12.0, 70.0, 90.0), (1, 10.0, 12.0, 70.0, 90.0)]
    losses = model.loss(images, samples)
    assert losses["loss_region_alignment"] > 0 and losses["loss_image_alignment"] > 0
    side = visual.image_size
    crop = torch.nn.functional.interpolate(images[:1, :, 12:90, 10:70], (side, side), mode="bilinear",
                                           antialias=True)  # fmt: skip
    with torch.no_grad():
        expected = v_b(visual, v_a(visual, crop))
    assert torch.allclose(model.teacher_embedding(images, [(0, 10.0, 12.0, 70.0, 90.0)]), expected, atol=1e-5)


def test_without_image_alignment_there_is_no_such_loss():
    model = tiny_model(image_alignment=dict(loss_weight=0.0, regions_per_image=2)).train()
    losses = model.loss(*batch())
    assert "loss_image_alignment" not in losses and "loss_region_alignment" not in losses


# -- configs and the stages ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.glob("gridclip/*.py")) + sorted(CONFIGS.glob("tiny/gridclip*.py"))
)
def test_every_gridclip_config_loads(path):
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports == dict(imports=["clipgap_cli.models"], allow_failed_imports=False)
    m = cfg.model
    assert (m.type, m.backbone.type, m.bbox_head.type) == ("GridCLIP", "GridCLIPBackbone", "GridCLIPHead")
    assert m.image_alignment.clip == m.backbone.clip and cfg.train_cfg.type == "IterBasedTrainLoop"
    augmented = path.stem.endswith("_aug")
    assert (m.backbone.get("augmentation", {}).get("type") == "SemanticAugmentation") == augmented


@pytest.fixture
def prepared_run(tiny_run, synth_data):
    optimize_augs(tiny_run, synth_data, iters=2, crops_per_iter=4)
    return tiny_run


def test_the_default_config_is_completed_from_the_run_and_builds(tiny_run, synth_data):
    config = CONFIGS / DETECTORS["gridclip"]
    cfg, used = compose_config(Run.open(tiny_run), config, synth_data)
    m = cfg.model
    assert m.backbone.clip == m.image_alignment.clip == TINY_CLIP
    assert m.neck.in_channels == [128, 256, 64] and m.bbox_head.embed_dim == 64
    assert m.bbox_head.num_classes == 7 and m.bbox_head.class_embeddings.endswith(TEXT_EMBEDDINGS)
    assert used["inputs"] == [TEXT_EMBEDDINGS] and m.backbone.get("augmentation") is None
    register_all_modules()
    model = MODELS.build(m)
    texts = load_text_embeddings(Run.open(tiny_run)).classes
    assert torch.allclose(model.bbox_head.class_embeddings, torch.nn.functional.normalize(texts, dim=-1))


def test_the_augmented_config_needs_the_offsets_and_gets_their_path(tiny_run, synth_data):
    with pytest.raises(ClipgapError, match="clipgap optimize-augs"):
        compose_config(Run.open(tiny_run), CONFIGS / TINY_AUG, synth_data)
    optimize_augs(tiny_run, synth_data, iters=1, crops_per_iter=2)
    cfg, used = compose_config(Run.open(tiny_run), CONFIGS / TINY_AUG, synth_data)
    assert cfg.model.backbone.augmentation.offsets.endswith(OFFSETS) and OFFSETS in used["inputs"]


def test_the_lvis_config_samples_by_class_rarity_from_the_spec_split(tiny_run, synth_data):
    from mmdet.registry import DATASETS

    cfg, _ = compose_config(
        Run.open(tiny_run), CONFIGS / "gridclip" / "gridclip_clip-rn101_fpn_lvis.py", synth_data
    )
    wrapper = cfg.train_dataloader.dataset
    spec = load_spec(synth_data)
    assert wrapper.type == "ClassBalancedDataset" and wrapper.dataset.ann_file == str(
        spec.train_split.ann_file
    )
    register_all_modules()
    dataset = DATASETS.build(wrapper)
    # Every image is repeated at least once; rarer classes' images more often, never fewer.
    assert len(dataset) >= len(dataset.dataset) > 0
    assert cfg.model.test_cfg.max_per_img == 300


def test_a_config_that_cannot_be_completed_is_refused(tiny_run, synth_data, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(f'_base_ = "{CONFIGS / TINY}"\nmodel = dict(neck=None)\n')
    with pytest.raises(
        ClipgapError, match="cannot complete config .*neither clipgap's C4 Faster R-CNN nor GridCLIP"
    ):
        compose_config(Run.open(tiny_run), broken, synth_data)
    result = CliRunner().invoke(
        app, ["train", "--run", str(tiny_run), "--data", str(synth_data), "--detector", "yolo"]
    )
    assert_one_line_error(result, "--detector must be one of clipgap, gridclip")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synth_data):
    """The tiny GridCLIP trained through the CLI for 20 iterations, validated at the last."""
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
    from clipgap_cli.stages.encode_prompts import encode_prompts

    run = tmp_path_factory.mktemp("gridclip") / "run"
    encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-tiny", pretrained=None)
    args = ["train", "--run", run, "--data", synth_data, "--detector", "gridclip", "--config", TINY]
    args += ["--device", "cpu", "--max-iters", "20", "--cfg-options", "train_cfg.val_interval=20"]
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return run


def test_tiny_gridclip_trains_through_the_cli(trained_run):
    run = Run.open(trained_run)
    assert run.verified(f"{WORK_DIR}/iter_20.pth").stage == "train"
    losses = logged_losses(run.path(WORK_DIR))  # iterations 5, 10, 20
    assert len(losses) >= 3 and losses[-1] < 0.6 * losses[0], losses
    state = torch.load(run.path(f"{WORK_DIR}/iter_20.pth"), map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    assert "bbox_head.class_embeddings" in state and not any("teacher" in k for k in state)


def test_tiny_gridclip_evaluates_every_domain(trained_run, synth_data):
    args = ["evaluate", "--run", str(trained_run), "--data", str(synth_data), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--checkpoint", "last"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.split()]
    assert [row[0].rstrip("*") for row in rows if row[0].rstrip("*") in DOMAINS] == DOMAINS
    assert all(len(row) == 1 + 7 + 2 for row in rows if row[0].rstrip("*") in DOMAINS), result.output


def test_gridclip_with_semantic_augmentation_trains(prepared_run, synth_data):
    args = ["train", "--run", prepared_run, "--data", synth_data, "--config", TINY_AUG, "--device", "cpu"]
    result = CliRunner().invoke(
        app, [*map(str, args), "--max-iters", "4", "--cfg-options", "train_cfg.val_interval=10"]
    )
    assert result.exit_code == 0, result.output
    run = Run.open(prepared_run)
    assert set(run.verified(f"{WORK_DIR}/iter_4.pth").inputs) == {TEXT_EMBEDDINGS, OFFSETS}
    state = torch.load(run.path(f"{WORK_DIR}/iter_4.pth"), map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    offsets = torch.load(run.path(OFFSETS), weights_only=True)["offset_means"]
    assert torch.equal(state["backbone.augmentation.offset_means"], offsets)


def test_two_cpu_processes_train_gridclip_with_gloo(tiny_run, synth_data):
    args = ["train", "--run", tiny_run, "--data", synth_data, "--detector", "gridclip", "--config", TINY]
    args += ["--device", "cpu"]
    args += ["--gpus", "2", "--max-iters", "2", "--master-port", "29641"]
    args += ["--cfg-options", "train_cfg.val_interval=10"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "clipgap_cli", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = Run.open(tiny_run)
    assert run.verified(f"{WORK_DIR}/iter_2.pth")
    (log,) = run.path(WORK_DIR).glob("*/*.log")
    assert "GPU number: 2" in log.read_text()


@pytest.fixture(scope="module")
def rn50_run(tmp_path_factory):
    """A run on a real CLIP model (RN50, random weights: nothing to download)."""
    run = tmp_path_factory.mktemp("rn50") / "run"
    encode_prompts(run, ["an image taken at night"], clip="RN50", pretrained=None)
    return run


@pytest.mark.parametrize(
    "options, config",
    [
        ([], DETECTORS["clipgap"]),
        (["--detector", "gridclip"], DETECTORS["gridclip"]),
        (["--detector", "gridclip", "--config", TINY], TINY),
    ],
)
def test_detector_picks_the_default_config_and_config_overrides_it(monkeypatch, rn50_run, options, config):
    trained = []
    monkeypatch.setattr("clipgap_cli.cli.train", lambda run, config, data, **kw: trained.append(config) or [])
    args = ["train", "--run", str(rn50_run), "--data", str(rn50_run), "--device", "cpu", *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert trained == [CONFIGS / config]
