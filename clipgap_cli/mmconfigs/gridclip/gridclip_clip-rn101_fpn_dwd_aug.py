# GridCLIP with CLIP the Gap's semantic augmentation (neither paper has it): the offsets A_j
# of `clipgap optimize-augs`, added to the layer3 map in training, as in the C4 detector.
# Needs the run's `augs/offsets.pt`; `clipgap train` fills in its path.
_base_ = "./gridclip_clip-rn101_fpn_dwd.py"

model = dict(backbone=dict(augmentation=dict(type="SemanticAugmentation", offsets=None, prob=0.5)))
