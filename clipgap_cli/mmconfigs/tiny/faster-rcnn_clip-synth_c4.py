# ./faster-rcnn_clip-synth_c4_aug.py without the semantic augmentation: the CPU table's
# text-classifier row (clip-t) and, with `model.roi_head.bbox_head.classifier='linear'`, its
# source-only baseline.
_base_ = "./faster-rcnn_clip-synth_c4_aug.py"

model = dict(neck=None)
