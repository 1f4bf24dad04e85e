# The quick start's detector (`nox -s demo`): ./faster-rcnn_clip-synth_c4_aug.py on a
# third of its schedule, to stay within minutes on a laptop's CPU: 400 iterations of batch 2,
# the learning rate warmed up over 50 iterations and divided by 10 at 320, the best
# checkpoint by source AP50 every 200. It has not finished learning (the full schedule's
# learning curve: docs/results/learning-curves.md).
_base_ = "./faster-rcnn_clip-synth_c4_aug.py"

train_cfg = dict(max_iters=400, val_interval=200)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=400, milestones=[320], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=200))
