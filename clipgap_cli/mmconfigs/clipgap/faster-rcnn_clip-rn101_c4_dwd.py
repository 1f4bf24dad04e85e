# CLIP the Gap (Vidit et al., CVPR 2023) on the Diverse Weather Dataset: CLIP RN101 Faster R-CNN
# (C4), trained on daytime_clear with semantic augmentations, selected on daytime_clear/test.
# Run with `clipgap train --config clipgap/faster-rcnn_clip-rn101_c4_dwd.py`, which
# fills in the run's artifacts and the dataset's paths (docs/method.md, "The detector").
_base_ = [
    "../_base_/models/faster-rcnn_clip-rn101_c4.py",
    "../_base_/datasets/dwd.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["clipgap_cli.models"], allow_failed_imports=False)

# The reference's solver: SGD, batch 4 on one GPU, x0.1 at 40k of 200k iterations,
# no warmup. The reference spends its first 1000 iterations optimising the augmentations
# (its LR schedule counts them), so its detector takes 199k steps, 39k at lr 1e-3;
# `clipgap optimize-augs` does that beforehand, and the detector here takes the round 200k
# and 40k: 0.5% more steps, kept for numbers that read as the paper's.
train_dataloader = dict(batch_size=4)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=200000, val_interval=5000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="SGD", lr=1e-3, momentum=0.9, weight_decay=1e-4)
)
param_scheduler = [
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=200000, milestones=[40000], gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=4)

# The paper's model selection: the best VOC07 11-point AP50 on the source test set (the
# dataset's val_dataloader), evaluated every 5000 iterations.
default_hooks = dict(
    checkpoint=dict(
        type="CheckpointHook",
        by_epoch=False,
        interval=5000,
        save_best="pascal_voc/mAP",
        rule="greater",
        max_keep_ckpts=2,
    ),
    logger=dict(type="LoggerHook", interval=50),
)
log_processor = dict(by_epoch=False)
