# GridCLIP's solver: mmdet's FCOS one (SGD, bias lr x2 without weight decay, gradient
# clipping, linear warmup over 500 iterations, x0.1 at two steps), counted in iterations as
# clipgap's stages expect, keeping the best checkpoint by `save_best`. The configs set the
# batch, lr, length, steps and validation interval. On top of mmdet's default runtime.
_base_ = "mmdet::_base_/default_runtime.py"

train_cfg = dict(type="IterBasedTrainLoop", max_iters=90000, val_interval=10000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(bias_lr_mult=2.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=35, norm_type=2),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=90000, milestones=[60000, 80000], gamma=0.1),
]
default_hooks = dict(
    checkpoint=dict(
        type="CheckpointHook",
        by_epoch=False,
        interval=10000,
        save_best="coco/bbox_mAP",
        rule="greater",
        max_keep_ckpts=2,
    ),
    logger=dict(type="LoggerHook", interval=50),
)
log_processor = dict(by_epoch=False)
