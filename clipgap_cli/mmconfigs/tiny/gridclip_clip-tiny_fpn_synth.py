# GridCLIP on the tiny random CLIP (RN-tiny) and the synthetic benchmark, sized for the CPU:
# tests and the quick start. Same parts and protocol as ../gridclip/gridclip_clip-rn101_fpn_dwd.py;
# narrower FPN and head, smaller batches and schedule.
_base_ = [
    "../_base_/models/gridclip_clip-rn101_fpn_fcos.py",
    "../_base_/datasets/synth.py",
    "../_base_/schedules/gridclip_fcos_iter.py",
]
custom_imports = dict(imports=["clipgap_cli.models"], allow_failed_imports=False)

# RN-tiny: C2 128, C3 256, D 64, image size 128.
clip = dict(name="RN-tiny", pretrained=None)
model = dict(
    backbone=dict(clip=clip),
    neck=dict(in_channels=[128, 256, 64], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2, embed_dim=64),
    image_alignment=dict(clip=clip),
)

train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
# Validation and evaluation 8 images at a time: 1.2 times faster per image on two CPU cores
# (benchmarks/train_profile.py), with the same boxes, as the synthetic images share one size
# and so need no padding. (The C4 detector gains nothing from it and validates one at a time.)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader

train_cfg = dict(max_iters=200, val_interval=50)
param_scheduler = [dict(type="MultiStepLR", by_epoch=False, begin=0, end=200, milestones=[150], gamma=0.1)]
default_hooks = dict(checkpoint=dict(interval=50, save_best="pascal_voc/mAP"), logger=dict(interval=10))
env_cfg = dict(dist_cfg=dict(backend="gloo"))
