# The CLIP the Gap detector on the tiny random CLIP (RN-tiny) and the synthetic benchmark,
# sized for the CPU: tests, the quick start, the distributed test. Same parts and protocol as
# ../clipgap/faster-rcnn_clip-rn101_c4_dwd.py; smaller proposals, batches and schedule.
_base_ = [
    "../_base_/models/faster-rcnn_clip-rn101_c4.py",
    "../_base_/datasets/synth.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["clipgap_cli.models"], allow_failed_imports=False)

# RN-tiny: C3 256, C4 512, D 64, image size 128, so RoIs of 8 x 8.
clip = dict(name="RN-tiny", pretrained=None)
model = dict(
    backbone=dict(clip=clip),
    rpn_head=dict(
        in_channels=256,
        feat_channels=256,
        # 16..128 px: synthetic objects span about 10% to 50% of a 128..256 px image.
        anchor_generator=dict(scales=[1, 2, 4, 8]),
    ),
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=dict(output_size=8), out_channels=256),
        shared_head=dict(clip=clip),
        bbox_head=dict(in_channels=512, embed_dim=64),
    ),
    train_cfg=dict(rpn_proposal=dict(nms_pre=600, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=600, max_per_img=100)),
)

train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader

train_cfg = dict(type="IterBasedTrainLoop", max_iters=200, val_interval=50)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="SGD", lr=0.005, momentum=0.9, weight_decay=1e-4)
)
param_scheduler = [dict(type="MultiStepLR", by_epoch=False, begin=0, end=200, milestones=[150], gamma=0.1)]

default_hooks = dict(
    checkpoint=dict(
        type="CheckpointHook",
        by_epoch=False,
        interval=50,
        save_best="pascal_voc/mAP",
        rule="greater",
        max_keep_ckpts=2,
    ),
    logger=dict(type="LoggerHook", interval=10),
)
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
