# Ablation: CLIP the Gap without semantic augmentations (no neck; needs no `optimize-augs`).
_base_ = "./faster-rcnn_clip-rn101_c4_dwd.py"

model = dict(neck=None)
