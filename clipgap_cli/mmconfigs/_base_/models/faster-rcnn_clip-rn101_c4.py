# CLIP the Gap's detector (docs/method.md, "The detector"): mmdet's C4
# Faster R-CNN with CLIP's image encoder split around the RoI head, V_a as the backbone and
# V_b as the RoI shared head, the semantic augmentation as the neck, and a bbox head that
# classifies by cosine to CLIP text embeddings.
# What the stock C4 model already sets as the reference does, and this file keeps:
#   RPN: RPNHead 3x3 conv (C3 -> C3) + ReLU; anchors stride 16, scales 2..32 (32..512 px),
#     ratios 0.5/1/2, center offset 0; deltas with stds 1; sigmoid CE + L1; 256 anchors a
#     image, half positive, no border limit; proposals 12000 -> NMS 0.7 -> 2000 (train),
#     6000 -> 1000 (test), no minimum size.
#   RoI head: StandardRoIHead, RoIAlign at stride 16, sampling_ratio 0; 512 RoIs an image,
#     25% positive, ground truth added as proposals; assigner 0.5/0.5, no low-quality matches;
#     test score 0.05, NMS 0.5, 100 detections an image.
# `clipgap train` fills in, from the run directory: both `clip`s, the C3 / C4 / D sizes, the
# RoI size S, `num_classes`, `class_embeddings` and the neck's `offsets` (docs/method.md).
_base_ = "mmdet::_base_/models/faster-rcnn_r50-caffe-c4.py"
import open_clip  # noqa: E402  (a config with a _base_ may import; the module is no config entry)

clip = dict(name="RN101", pretrained="openai")
model = dict(
    data_preprocessor=dict(
        # CLIP's RGB mean and std (open_clip's) on the 0-255 scale, to 3 decimals as the reference
        # writes them. The reference pads each batch to its largest image only; mmdet pads to a
        # multiple of 32, a few pixels more of zeros.
        mean=[round(255 * m, 3) for m in open_clip.OPENAI_DATASET_MEAN],
        std=[round(255 * s, 3) for s in open_clip.OPENAI_DATASET_STD],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    backbone=dict(
        _delete_=True,
        type="CLIPResNetBackbone",
        clip=clip,
        frozen_stages=2,  # stem, layer1, layer2 frozen; layer3 trains
        norm_eval=False,
    ),  # the reference's batch-statistics BatchNorm (docs/method.md)
    neck=dict(type="SemanticAugmentation", offsets=None, prob=0.5),
    rpn_head=dict(in_channels=1024, feat_channels=1024),  # C3
    roi_head=dict(
        # S = image_size/16 of the CLIP model: layer4's S/2 x S/2 output fits attnpool.
        bbox_roi_extractor=dict(
            roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0, aligned=True),
            out_channels=1024,  # C3
            featmap_strides=[16],
        ),
        shared_head=dict(_delete_=True, type="CLIPResLayer4Head", clip=clip, norm_eval=False),
        bbox_head=dict(
            _delete_=True,
            type="CLIPBBoxHead",
            num_classes=7,
            in_channels=2048,  # C4
            embed_dim=512,  # D
            classifier="text",
            class_embeddings=None,
            logit_scale=100.0,
        ),
    ),
    # detectron2 lets every ground truth take its best anchors, however low their IoU.
    train_cfg=dict(rpn=dict(assigner=dict(min_pos_iou=0.0))),
)
