# ./gridclip_clip-synth_fpn.py with CLIP the Gap's semantic augmentation on the layer3 map
# (needs `optimize-augs`): the CPU table's last row.
_base_ = "./gridclip_clip-synth_fpn.py"

model = dict(backbone=dict(augmentation=dict(type="SemanticAugmentation", offsets=None, prob=0.5)))
