# The tiny GridCLIP on RN-synth, clipgap's CLIP of the synthetic world: the CPU table's
# GridCLIP row (benchmarks/cpu_table.py), on the schedule of the C4 rows
# (./faster-rcnn_clip-synth_c4_aug.py): 1200 iterations of batch 2, the learning rate warmed up
# over 50 iterations and divided by 10 at 960, the best checkpoint by source AP50 every 400.
_base_ = "./gridclip_clip-tiny_fpn_synth.py"

clip = dict(name="RN-synth", pretrained="synth")
model = dict(backbone=dict(clip=clip), image_alignment=dict(clip=clip))

train_cfg = dict(max_iters=1200, val_interval=400)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=1200, milestones=[960], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=400))
