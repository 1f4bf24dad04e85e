# The tiny GridCLIP with CLIP the Gap's semantic augmentation on the layer3 map, as
# ../gridclip/gridclip_clip-rn101_fpn_dwd_aug.py is the full-size one; needs `optimize-augs`.
_base_ = "./gridclip_clip-tiny_fpn_synth.py"

model = dict(backbone=dict(augmentation=dict(type="SemanticAugmentation", offsets=None, prob=0.5)))
