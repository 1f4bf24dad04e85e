# A COCO-format dataset of one domain (COCO, LVIS v1 or your own; docs/data.md): its
# clipgap-data.json names the classes and the train and evaluation splits, and clipgap's stages
# replace `ann_file`, `data_prefix` and the classes of each dataset below with them (the
# paths here are placeholders). LVIS v1's json loads as COCO-format once each image has a
# `file_name` (docs/data.md).
# Protocol: mmdet's COCO one: short side 800 (long side at most 1333), horizontal flip, COCO AP.
dataset_type = "CocoDataset"
data_root = "data/coco/"
backend_args = None

train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    batch_sampler=dict(type="AspectRatioBatchSampler"),
    dataset=dict(
        type=dataset_type,
        ann_file=f"{data_root}annotations/instances_train2017.json",
        data_prefix=dict(img=f"{data_root}train2017/"),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_file=f"{data_root}annotations/instances_val2017.json",
        data_prefix=dict(img=f"{data_root}val2017/"),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args,
    ),
)
test_dataloader = val_dataloader

# The ground truth comes from the dataset that clipgap points the loader at.
val_evaluator = dict(type="CocoMetric", ann_file=None, metric="bbox", format_only=False)
test_evaluator = val_evaluator
