# GridCLIP (Lin & Gong, 2023) on the Diverse Weather Dataset: CLIP RN101 FCOS with grid- and
# image-level alignment, trained on daytime_clear, selected on daytime_clear/test; the same
# data, CLIP model and protocol as ../clipgap/faster-rcnn_clip-rn101_c4_dwd.py, so the two
# methods compare. Run with `clipgap train --detector gridclip`, which fills in the run's
# artifacts and the dataset's paths (docs/method.md, "GridCLIP").
_base_ = [
    "../_base_/models/gridclip_clip-rn101_fpn_fcos.py",
    "../_base_/datasets/dwd.py",
    "../_base_/schedules/gridclip_fcos_iter.py",
]
custom_imports = dict(imports=["clipgap_cli.models"], allow_failed_imports=False)

# mmdet's FCOS solver at CLIP the Gap's batch of 4, lr linearly scaled (0.01 for batch 16):
# 12 epochs of the 19,395 daytime_clear images (58k iterations), x0.1 after epochs 8 and 11;
# as CLIP the Gap, the best VOC07 11-point AP50 on the source test set every 5000 iterations.
train_dataloader = dict(batch_size=4)
train_cfg = dict(max_iters=58000, val_interval=5000)
optim_wrapper = dict(optimizer=dict(lr=0.0025))
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=58000, milestones=[39000, 53000], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=4)
default_hooks = dict(checkpoint=dict(interval=5000, save_best="pascal_voc/mAP"))
