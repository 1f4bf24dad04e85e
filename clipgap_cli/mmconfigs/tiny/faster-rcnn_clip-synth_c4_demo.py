# The quick start's detector (`nox -s demo`): the tiny C4 detector on RN-synth, clipgap's CLIP
# of the synthetic world, with semantic augmentations, trained longer than the test config
# so that it detects: 256 px images, 600 iterations of batch 2, the learning rate warmed up
# over 50 iterations and divided by 10 at 450.
_base_ = "./faster-rcnn_clip-tiny_c4_synth.py"

clip = dict(name="RN-synth", pretrained="synth")
model = dict(backbone=dict(clip=clip), roi_head=dict(shared_head=dict(clip=clip)))

train_cfg = dict(type="IterBasedTrainLoop", max_iters=1000, val_interval=250)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=1000, milestones=[800], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=250))
