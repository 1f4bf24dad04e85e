# The tiny C4 Faster R-CNN on RN-synth, clipgap's CLIP of the synthetic world, with the text
# classifier and the semantic augmentation (CLIP the Gap): the CLIP the Gap row of the CPU
# table (benchmarks/cpu_table.py, whose C4 and GridCLIP rows all share this schedule):
# 1200 iterations of batch 2 at 256 px, the learning rate warmed up over 50 iterations and
# divided by 10 at 960, the best checkpoint by source AP50 every 400. GridCLIP has learned
# by then; this detector has not (twice the schedule adds 11 source AP50), but twice does not
# fit the table's budget on two cores (docs/results/learning-curves.md). At test time 50
# proposals an image, not 100: the RoI head runs layer4 on each of them.
_base_ = "./faster-rcnn_clip-tiny_c4_synth.py"

clip = dict(name="RN-synth", pretrained="synth")
model = dict(
    backbone=dict(clip=clip),
    roi_head=dict(shared_head=dict(clip=clip)),
    test_cfg=dict(rpn=dict(max_per_img=50)),
)

train_cfg = dict(type="IterBasedTrainLoop", max_iters=1200, val_interval=400)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=1200, milestones=[960], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=400))
