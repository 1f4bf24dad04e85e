"""The CLIP the Gap detector: semantic augmentation neck, cosine bbox head, token-0 attnpool, configs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner

import clipgap_cli.models  # noqa: F401  (registers the components)
from clipgap_cli.artifacts import OFFSETS_FORMAT, load_text_embeddings
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import STEM, attnpool_token0
from clipgap_cli.data.spec import load_spec
from clipgap_cli.errors import ClipgapError
from clipgap_cli.models import CLIPBBoxHead, ClipRoIFeatures, SemanticAugmentation
from clipgap_cli.rundir import TEXT_EMBEDDINGS
from clipgap_cli.stages.train import CONFIGS

MAIN = CONFIGS / "clipgap/faster-rcnn_clip-rn101_c4_dwd.py"
TINY = CONFIGS / "tiny/faster-rcnn_clip-tiny_c4_synth.py"


# -- the semantic augmentation -------------------------------------------------------------


def distinct_means(m=5, c=6):
    """(M, C) means whose rows differ everywhere, so a shift tells which row was added."""
    return torch.arange(m * c, dtype=torch.float32).view(m, c) + 1


def maps(n=4, c=6):
    return torch.randn(n, c, 3, 5)


def drawn_offsets(neck, x):
    """Which row of the means each image of the batch got, or None if the batch was left alone."""
    (out,) = neck((x,))
    shift = out - x
    if torch.equal(out, x):
        return None
    # The shift is one row of the means, the same at every position of the map.
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))
    per_image = shift[:, :, 0, 0]  # (N, C)
    matches = torch.isclose(per_image[:, None], neck.offset_means[None], atol=1e-5).all(-1)  # (N, M)
    assert (matches.sum(1) == 1).all(), "every image gets exactly one whole mean(A_j)"
    return matches.int().argmax(1).tolist()


def test_augmentation_is_the_identity_in_eval_mode():
    neck = SemanticAugmentation(offset_means=distinct_means().tolist(), prob=1.0).eval()
    x = maps()
    for _ in range(20):
        (out,) = neck((x,))
        assert torch.equal(out, x)


def test_augmentation_adds_one_mean_offset_per_image_to_a_whole_batch():
    neck = SemanticAugmentation(offset_means=distinct_means().tolist(), prob=1.0).train()
    torch.manual_seed(0)
    drawn = [drawn_offsets(neck, maps()) for _ in range(50)]
    assert None not in drawn
    flat = [j for batch in drawn for j in batch]
    assert set(flat) == set(range(5)), "j is drawn from all M offsets"
    assert any(len(set(batch)) > 1 for batch in drawn), "j is drawn per image, not per batch"


def test_augmentation_applies_to_about_half_of_the_batches_and_follows_the_seed():
    neck = SemanticAugmentation(offset_means=distinct_means().tolist(), prob=0.5).train()
    x = maps()

    def draws():
        torch.manual_seed(0)
        return [drawn_offsets(neck, x) for _ in range(400)]

    first = draws()
    applied = sum(d is not None for d in first) / len(first)
    assert 0.4 < applied < 0.6
    assert draws() == first


def write_offsets(path, offsets):
    """An A artifact as `clipgap optimize-augs` writes it: offsets (M, C, S, S) and their means."""
    torch.save({"format": OFFSETS_FORMAT, "offsets": offsets, "offset_means": offsets.mean((2, 3))}, path)
    return str(path)


def test_augmentation_means_come_from_the_offsets_artifact_and_are_saved(tmp_path):
    offsets = torch.randn(3, 6, 4, 4)
    neck = SemanticAugmentation(offsets=write_offsets(tmp_path / "offsets.pt", offsets))
    assert torch.equal(neck.offset_means, offsets.mean((2, 3)))
    assert "offset_means" in neck.state_dict()
    assert not list(neck.parameters())


def test_augmentation_refuses_bad_offsets(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        SemanticAugmentation()
    with pytest.raises(ValueError, match="exactly one"):
        SemanticAugmentation(offsets="a.pt", offset_means=[[0.0]])
    with pytest.raises(ClipgapError, match="clipgap optimize-augs"):
        SemanticAugmentation(offsets=str(tmp_path / "missing.pt"))
    torch.save({"format": 99}, tmp_path / "old.pt")
    with pytest.raises(ClipgapError, match="not an offsets file"):
        SemanticAugmentation(offsets=str(tmp_path / "old.pt"))
    neck = SemanticAugmentation(offset_means=distinct_means(c=6).tolist())
    with pytest.raises(ValueError, match="another CLIP model"):
        neck((maps(c=8),))


# -- the bbox head -------------------------------------------------------------------------

K, D, C4 = 7, 64, 512


def text_head(**kwargs):
    embeddings = F.normalize(torch.randn(K, D, generator=torch.Generator().manual_seed(0)), dim=-1).tolist()
    return CLIPBBoxHead(num_classes=K, in_channels=C4, embed_dim=D, class_embeddings=embeddings, **kwargs)


def roi_features(r=10):
    g = torch.Generator().manual_seed(1)
    embedding, pooled = torch.randn(r, D, generator=g) * 3, torch.randn(r, C4, generator=g)
    return ClipRoIFeatures(embedding=embedding, pooled=pooled)


def test_text_logits_are_100_cos_with_a_zero_background_last():
    head = text_head()
    x = roi_features()
    cls_score, bbox_pred = head(x)
    cos = F.cosine_similarity(x.embedding[:, None], head.class_embeddings[None], dim=-1)  # (R, K)
    assert cls_score.shape == (10, K + 1)
    torch.testing.assert_close(cls_score[:, :K], 100 * cos)
    assert torch.equal(cls_score[:, K], torch.zeros(10))
    assert bbox_pred.shape == (10, 4 * K)
    torch.testing.assert_close(bbox_pred, head.fc_reg(x.pooled))


def test_regression_is_initialised_as_the_reference():
    head = text_head()
    head.init_weights()
    assert head.fc_reg.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert torch.equal(head.fc_reg.bias, torch.zeros(4 * K))
    assert list(head.bbox_coder.stds) == [0.1, 0.1, 0.2, 0.2]
    assert type(head.loss_bbox).__name__ == "L1Loss"
    assert not head.loss_cls.use_sigmoid


def test_text_embeddings_are_a_frozen_saved_buffer():
    head = text_head()
    before = head.class_embeddings.clone()
    assert "class_embeddings" in head.state_dict()
    assert all(p is not head.class_embeddings for p in head.parameters())
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    cls_score, bbox_pred = head(roi_features())
    (F.cross_entropy(cls_score, torch.arange(10) % (K + 1)) + bbox_pred.sum()).backward()
    optimizer.step()
    assert not head.class_embeddings.requires_grad and head.class_embeddings.grad is None
    assert torch.equal(head.class_embeddings, before)


def test_class_embeddings_come_from_the_text_embeddings_artifact(tiny_run):
    path = tiny_run / TEXT_EMBEDDINGS
    head = CLIPBBoxHead(num_classes=K, in_channels=C4, embed_dim=D, class_embeddings=str(path))
    torch.testing.assert_close(head.class_embeddings, load_text_embeddings(tiny_run).classes)
    with pytest.raises(ValueError, match=r"must be \(7, 1024\).*another CLIP model"):
        CLIPBBoxHead(num_classes=K, in_channels=C4, embed_dim=1024, class_embeddings=str(path))
    with pytest.raises(ValueError, match=r"must be \(3, 64\)"):
        CLIPBBoxHead(num_classes=3, in_channels=C4, embed_dim=D, class_embeddings=str(path))


def test_a_new_vocabulary_changes_the_classes_without_retraining():
    head = text_head()
    state = copy.deepcopy(head.state_dict())
    x = roi_features()
    trained = head.class_embeddings
    # Two trained classes, in another order, and a class never trained on.
    near_4 = trained[4] + 0.1 * torch.randn(D, generator=torch.Generator().manual_seed(2))
    new_class = F.normalize(near_4, dim=-1)
    vocabulary = torch.stack([trained[5], trained[2], new_class])
    head.set_vocabulary(vocabulary)

    cls_score, bbox_pred = head(x)
    assert cls_score.shape == (10, 4) and head.num_classes == 3
    cos = F.cosine_similarity(x.embedding[:, None], vocabulary[None], dim=-1)
    torch.testing.assert_close(cls_score[:, :3], 100 * cos)
    assert torch.equal(cls_score[:, 3], torch.zeros(10))
    # Each new class regresses with its nearest trained class's regressor.
    trained_deltas = head.fc_reg(x.pooled).view(10, K, 4)
    assert torch.equal(bbox_pred.view(10, 3, 4), trained_deltas[:, [5, 2, 4]])

    rois = torch.cat([torch.zeros(10, 1), torch.tensor([[0.0, 0.0, 40.0, 40.0]]).repeat(10, 1)], dim=1)
    cfg = Config(dict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100))
    (result,) = head.predict_by_feat((rois,), (cls_score,), (bbox_pred,), [dict(img_shape=(64, 64))], cfg)
    assert len(result) > 0 and result.labels.max() < 3

    for key, value in head.state_dict().items():
        assert torch.equal(value, state[key]), "the trained head is untouched"
    with pytest.raises(ValueError, match="reg_classes"):
        head.set_vocabulary(vocabulary, reg_classes=[0, 1, K])
    head.set_vocabulary(None)
    assert head(x)[0].shape == (10, K + 1) and head(x)[1].shape == (10, 4 * K)


def test_the_linear_classifier_trains_and_has_a_fixed_vocabulary():
    head = CLIPBBoxHead(num_classes=K, in_channels=C4, embed_dim=D, classifier="linear")
    head.init_weights()
    assert isinstance(head.fc_cls, torch.nn.Linear) and head.fc_cls.weight.shape == (K + 1, D)
    assert head.fc_cls.weight.requires_grad
    assert not hasattr(head, "class_embeddings")
    x = roi_features()
    torch.testing.assert_close(head(x)[0], head.fc_cls(x.embedding))
    with pytest.raises(ValueError, match="linear"):
        head.set_vocabulary(torch.randn(3, D))


# -- attention pooling from token 0 --------------------------------------------------------


@pytest.mark.parametrize("name", ["RN-tiny", "RN50"])
@pytest.mark.parametrize("training", [False, True])
def test_token0_attnpool_equals_open_clips(name, training):
    attnpool = copy.deepcopy(load_clip(name, None).visual.attnpool).train(training)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # Random biases and positions, so that every term of the fold is exercised.
        for p in attnpool.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.std().clamp(min=0.02))
    size = int((len(attnpool.positional_embedding) - 1) ** 0.5)
    x = torch.randn(6, attnpool.k_proj.in_features, size, size, generator=g)
    with torch.no_grad():
        expected = attnpool(x)
        torch.testing.assert_close(attnpool_token0(attnpool, x), expected, atol=1e-5, rtol=1e-5)


def test_token0_attnpool_has_open_clips_gradients():
    attnpool = copy.deepcopy(load_clip("RN-tiny", None).visual.attnpool).train().requires_grad_(True)
    x = torch.randn(4, attnpool.k_proj.in_features, 4, 4, requires_grad=True)
    w = torch.randn(4, attnpool.c_proj.out_features)
    grads = []
    for pool in (attnpool, lambda f: attnpool_token0(attnpool, f)):
        (pool(x) * w).sum().backward()
        grads.append([x.grad, *(p.grad for p in attnpool.parameters())])
        x.grad = None
        attnpool.zero_grad()
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


# -- the configs and the tiny detector -----------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.glob("clipgap/*.py")) + sorted(CONFIGS.glob("tiny/faster-rcnn*.py"))
)
def test_every_config_loads(path):
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports == dict(imports=["clipgap_cli.models"], allow_failed_imports=False)
    assert cfg.model.roi_head.bbox_head.type == "CLIPBBoxHead"


def test_the_main_config_has_the_references_values():
    cfg = Config.fromfile(str(MAIN))
    m = cfg.model
    assert m.data_preprocessor.mean == [122.771, 116.746, 104.094]
    assert m.data_preprocessor.std == [68.501, 66.632, 70.323] and m.data_preprocessor.bgr_to_rgb
    assert m.backbone.clip == dict(name="RN101", pretrained="openai") == m.roi_head.shared_head.clip
    assert m.backbone.frozen_stages == 2 and not m.backbone.norm_eval
    assert m.neck.type == "SemanticAugmentation" and m.neck.prob == 0.5
    anchors = m.rpn_head.anchor_generator
    assert (anchors.strides, anchors.scales, anchors.ratios) == ([16], [2, 4, 8, 16, 32], [0.5, 1.0, 2.0])
    assert anchors.get("center_offset", 0.0) == 0.0 and m.rpn_head.loss_bbox.type == "L1Loss"
    rpn = m.train_cfg.rpn
    assert (rpn.assigner.pos_iou_thr, rpn.assigner.neg_iou_thr) == (
        0.7,
        0.3,
    ) and rpn.assigner.match_low_quality
    assert (rpn.sampler.num, rpn.sampler.pos_fraction) == (256, 0.5)
    assert (m.train_cfg.rpn_proposal.nms_pre, m.train_cfg.rpn_proposal.max_per_img) == (12000, 2000)
    assert m.train_cfg.rpn_proposal.nms.iou_threshold == 0.7
    assert (m.test_cfg.rpn.nms_pre, m.test_cfg.rpn.max_per_img) == (6000, 1000)
    roi = m.roi_head.bbox_roi_extractor
    assert roi.roi_layer == dict(type="RoIAlign", output_size=14, sampling_ratio=0, aligned=True)
    assert roi.featmap_strides == [16]
    rcnn = m.train_cfg.rcnn
    assert (rcnn.sampler.num, rcnn.sampler.pos_fraction) == (512, 0.25) and rcnn.sampler.add_gt_as_proposals
    assert (rcnn.assigner.pos_iou_thr, rcnn.assigner.neg_iou_thr) == (0.5, 0.5)
    assert (m.test_cfg.rcnn.score_thr, m.test_cfg.rcnn.nms.iou_threshold, m.test_cfg.rcnn.max_per_img) == (
        0.05,
        0.5,
        100,
    )
    head = m.roi_head.bbox_head
    assert (head.num_classes, head.in_channels, head.embed_dim, head.logit_scale) == (7, 2048, 512, 100.0)
    assert cfg.optim_wrapper.optimizer == dict(type="SGD", lr=1e-3, momentum=0.9, weight_decay=1e-4)
    assert cfg.train_dataloader.batch_size == 4
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == (
        "IterBasedTrainLoop",
        200000,
        5000,
    )
    (scheduler,) = cfg.param_scheduler
    assert (scheduler.type, scheduler.milestones, scheduler.gamma, scheduler.by_epoch) == (
        "MultiStepLR",
        [40000],
        0.1,
        False,
    )
    checkpoint = cfg.default_hooks.checkpoint
    assert (checkpoint.by_epoch, checkpoint.interval, checkpoint.save_best, checkpoint.rule) == (
        False,
        5000,
        "pascal_voc/mAP",
        "greater",
    )
    assert cfg.val_evaluator == dict(type="VOCMetric", metric="mAP", eval_mode="11points")


@pytest.mark.parametrize(
    "ablation, field, value",
    [("no-aug", ("neck",), None), ("linear-cls", ("roi_head", "bbox_head", "classifier"), "linear")],
)
def test_each_ablation_changes_one_field_of_the_main_config(ablation, field, value):
    main = Config.fromfile(str(MAIN)).to_dict()
    other = Config.fromfile(str(MAIN.with_name(f"{MAIN.stem}_{ablation}.py"))).to_dict()
    node = other["model"]
    for key in field[:-1]:
        node = node[key]
    assert node[field[-1]] == value
    node = main["model"]
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    assert other == main


@pytest.fixture
def tiny_cfg(tiny_run, synth_data, tmp_path):
    """The tiny config with what `clipgap train` fills in: the run's artifacts, the dataset's paths."""
    register_all_modules()
    cfg = Config.fromfile(str(TINY))
    offsets = torch.randn(15, 256, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.1
    cfg.model.neck.offsets = write_offsets(tmp_path / "offsets.pt", offsets)
    cfg.model.roi_head.bbox_head.class_embeddings = str(tiny_run / TEXT_EMBEDDINGS)
    split = load_spec(synth_data).train_split
    cfg.train_dataloader.dataset.update(
        data_root="", ann_file=str(split.ann_file), data_prefix=dict(img=f"{split.image_dir}/")
    )
    return cfg


def tiny_batches(cfg, count):
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    batches = []
    while len(batches) < count:
        batches.extend(loader)
    return batches[:count]


@pytest.mark.parametrize("classifier", ["text", "linear"])
def test_the_tiny_detector_trains_the_right_parts_and_predicts(tiny_cfg, classifier):
    tiny_cfg.model.roi_head.bbox_head.classifier = classifier
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg.model)
    model.init_weights()
    (batch,) = tiny_batches(tiny_cfg, 1)
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model.loss(data["inputs"], data["data_samples"])
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= losses.keys()
    loss, _ = model.parse_losses(losses)
    loss.backward()

    def has_gradient(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    trained = [model.backbone.layer3, model.roi_head.shared_head.layer4, model.roi_head.shared_head.attnpool]
    trained += [model.rpn_head, model.roi_head.bbox_head.fc_reg]
    if classifier == "linear":
        trained.append(model.roi_head.bbox_head.fc_cls)
    else:
        assert not model.roi_head.bbox_head.class_embeddings.requires_grad
    for module in trained:
        assert has_gradient(module)
    # DistributedDataParallel (find_unused_parameters=False) fails on a trained parameter without one.
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    for name in (*STEM, "layer1", "layer2"):
        assert all(p.grad is None for p in getattr(model.backbone, name).parameters())

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        results = model.predict(data["inputs"], data["data_samples"])
    assert len(results) == len(batch["inputs"]) and any(len(r.pred_instances) for r in results)
    for result in results:
        pred = result.pred_instances
        assert pred.bboxes.shape == (len(pred.scores), 4) and len(pred.scores) <= 100
        assert ((pred.labels >= 0) & (pred.labels < K)).all()


def test_the_tiny_detector_trains_under_bfloat16_autocast(tiny_cfg):
    """AmpOptimWrapper(dtype='bfloat16') autocasts the forward pass (CUDA only; the CPU's
    autocast takes the same paths through mmdet and mmcv): RPN proposals and RoIAlign, whose
    mmcv kernels have no bf16 version, get float32 inputs (compat.py, CLIPResNetBackbone)."""
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg.model)
    model.init_weights()
    model.train()
    (batch,) = tiny_batches(tiny_cfg, 1)
    data = model.data_preprocessor(batch, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (f,) = model.backbone(data["inputs"])
        assert model.rpn_head.rpn_conv(f).dtype == torch.bfloat16  # the convolutions do run in bf16
        assert {t.dtype for t in model.rpn_head.forward_single(f)} == {torch.float32}
        losses = model.loss(data["inputs"], data["data_samples"])
    loss, _ = model.parse_losses(losses)
    assert f.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    # Gradients reach back through RoIAlign into the bf16 backbone.
    for module in (model.roi_head.shared_head.attnpool, model.backbone.layer3, model.rpn_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_the_loss_falls_with_the_tiny_configs_solver(tiny_cfg):
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg.model)
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, tiny_cfg.optim_wrapper)
    losses = []
    for batch in tiny_batches(tiny_cfg, 30):
        losses.append(model.train_step(batch, optim_wrapper)["loss"].item())
    # Batches of 2 make a noisy curve (seeds 0-3 end at 0.26-0.32 of the start).
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
