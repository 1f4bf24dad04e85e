# The synthetic benchmark (docs/data.md), made with
#   clipgap data synth data/synth
# which writes the images, their COCO json and clipgap-data.json under `data_root`, a path
# prefix (absolute or relative to the working directory); clipgap's stages replace
# `ann_file` and `data_prefix` of each dataset with the paths in its clipgap-data.json.
# Same domains, classes and protocol as the Diverse Weather Dataset (dwd.py), at the images'
# native size: train on daytime_clear/train, select on daytime_clear/test, score every
# target domain on its train list, with VOC07 11-point AP50.
dataset_type = "CocoDataset"
data_root = "data/synth/"
classes = ("bus", "bike", "car", "motor", "person", "rider", "truck")
metainfo = dict(classes=classes)
backend_args = None

source = "daytime_clear"
eval_splits = dict(
    daytime_clear="test", night_sunny="train", dusk_rainy="train", night_rainy="train", daytime_foggy="train"
)

# A scale factor of 1 keeps the native size and records it for rescaling the predictions.
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale_factor=1.0, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="Resize", scale_factor=1.0, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]

# Each domain's dataset on the split it is scored on; `clipgap evaluate --domain` picks one.
eval_datasets = {
    domain: dict(
        type=dataset_type,
        metainfo=metainfo,
        ann_file=f"{data_root}annotations/{domain}_{split}.json",
        data_prefix=dict(img=f"{data_root}voc/{domain}/VOC2007/JPEGImages/"),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args,
    )
    for domain, split in eval_splits.items()
}

train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    batch_sampler=dict(type="AspectRatioBatchSampler"),
    dataset=dict(
        type=dataset_type,
        metainfo=metainfo,
        ann_file=f"{data_root}annotations/{source}_train.json",
        data_prefix=dict(img=f"{data_root}voc/{source}/VOC2007/JPEGImages/"),
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
    dataset=eval_datasets[source],
)
test_dataloader = val_dataloader

val_evaluator = dict(type="VOCMetric", metric="mAP", eval_mode="11points")
test_evaluator = val_evaluator
