# ./faster-rcnn_clip-synth_c4_aug.py (RN-synth, the CPU table's schedule) with the style form of
# the semantic augmentations in place of the offsets, as ./faster-rcnn_clip-tiny_c4_synth_style.py
# places it: in the backbone at the styles' stage, every BatchNorm on its stored statistics.
_base_ = "./faster-rcnn_clip-synth_c4_aug.py"

model = dict(
    # Mixing on, probability 0.5: chosen on the validation conditions (docs/reproducing.md).
    backbone=dict(
        norm_eval=True, augmentation=dict(type="SemanticAugmentation", offsets=None, prob=0.5, mix=True)
    ),
    neck=None,
    roi_head=dict(shared_head=dict(norm_eval=True)),
)
