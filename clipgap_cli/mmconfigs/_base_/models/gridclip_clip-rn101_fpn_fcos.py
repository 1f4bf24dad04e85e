# GridCLIP's detector (docs/method.md, "GridCLIP"): mmdet's FCOS on CLIP's whole
# ResNet image encoder. The backbone gives layer2 (stride 8), layer3 (stride 16) and the dense
# CLIP embeddings of layer4 (stride 32, attnpool's value and output projections on every
# cell); an FPN makes P3-P7 of them; the FCOS head classifies each location by cosine to the
# class text embeddings (grid-level alignment); in training the mean of the dense embeddings
# is pulled towards the frozen CLIP image embedding (image-level alignment).
# What the FCOS parts keep from mmdet's improved FCOS (fcos_r50-caffe_fpn_gn-head-center-
# normbbox-centeronreg-giou): GN head of 4 convs, center sampling, normalised boxes,
# centerness on the regression branch, focal loss, GIoU loss, NMS 0.6.
# `clipgap train` fills in, from the run directory: both `clip`s, the FPN's input channels
# (C2, C3, D), the head's `embed_dim` and `num_classes`, `class_embeddings`, and the
# augmentation's `offsets` where a config adds one (docs/method.md).
# No base: an empty one makes this a classic mmengine config, which may import (and whose
# modules are no config entries), not a lazy-import one.
_base_ = []
import open_clip  # noqa: E402

clip = dict(name="RN101", pretrained="openai")
model = dict(
    type="GridCLIP",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        # CLIP's RGB mean and std (open_clip's) on the 0-255 scale, as the C4 detector's.
        mean=[round(255 * m, 3) for m in open_clip.OPENAI_DATASET_MEAN],
        std=[round(255 * s, 3) for s in open_clip.OPENAI_DATASET_STD],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    # `augmentation=dict(type="SemanticAugmentation", ...)` adds CLIP the Gap's to layer3 (the _aug configs).
    backbone=dict(type="GridCLIPBackbone", clip=clip, frozen_stages=1, norm_eval=True),
    neck=dict(
        type="FPN",
        in_channels=[512, 1024, 512],  # C2, C3, D
        out_channels=256,
        start_level=0,
        add_extra_convs="on_output",
        num_outs=5,
        relu_before_extra_convs=True,
    ),
    bbox_head=dict(
        type="GridCLIPHead",
        num_classes=7,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        strides=[8, 16, 32, 64, 128],
        embed_dim=512,  # D
        class_embeddings=None,
        temperature=0.07,
        prior_prob=0.01,
        norm_on_bbox=True,
        centerness_on_reg=True,
        center_sampling=True,
        conv_bias=True,
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=1.0),
        loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    ),
    # The frozen teacher is the backbone's CLIP model, loaded only when the loss first needs it.
    # regions_per_image=N also aligns each image's N largest ground-truth boxes (their cells
    # against the teacher's embedding of their crops): N more teacher passes an image.
    image_alignment=dict(clip=clip, loss_weight=1.0, regions_per_image=0),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type="nms", iou_threshold=0.6),
        max_per_img=100,
    ),
)
