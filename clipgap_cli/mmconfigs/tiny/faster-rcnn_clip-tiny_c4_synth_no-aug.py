# The tiny detector without semantic augmentations (no neck; needs no `optimize-augs`): the
# demo's baseline, as ../clipgap/faster-rcnn_clip-rn101_c4_dwd_no-aug.py is the paper's.
_base_ = "./faster-rcnn_clip-tiny_c4_synth.py"

model = dict(neck=None)
