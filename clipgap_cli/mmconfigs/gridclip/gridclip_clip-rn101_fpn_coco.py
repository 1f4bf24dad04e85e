# GridCLIP on COCO-format data (COCO, LVIS, your own; ../_base_/datasets/coco_style.py): the
# setting of the paper's open-vocabulary experiments. mmdet's FCOS 1x schedule: batch 16
# (8 GPUs x 2), lr 0.01, 90k iterations, x0.1 at 60k and 80k; the best COCO AP on the
# evaluation split. `clipgap train --config gridclip/gridclip_clip-rn101_fpn_coco.py`.
_base_ = [
    "../_base_/models/gridclip_clip-rn101_fpn_fcos.py",
    "../_base_/datasets/coco_style.py",
    "../_base_/schedules/gridclip_fcos_iter.py",
]
custom_imports = dict(imports=["clipgap_cli.models"], allow_failed_imports=False)

auto_scale_lr = dict(enable=False, base_batch_size=16)
