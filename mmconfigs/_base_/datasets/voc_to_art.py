# Pascal VOC to Watercolor2k and Comic2k (the reference's real-to-art benchmark), prepared with
#   clipgap data convert <root> --out data/voc_to_art
# where <root> holds VOCdevkit/ (VOC2007, VOC2012), watercolor/ and comic/. `data_root` gets
# the COCO json; the images stay in `image_root`. Both are path prefixes, absolute or relative
# to the working directory; clipgap's stages replace `ann_file` and `data_prefix` of each
# dataset with the paths in `data_root/clipgap-data.json`.
# Protocol: the 6 classes VOC and the art sets share; train on VOC 2007+2012 trainval, select
# checkpoints on VOC2007 test, score the art domains on their test lists, VOC07 11-point AP50.
dataset_type = "CocoDataset"
data_root = "data/voc_to_art/"
image_root = "data/"
classes = ("bicycle", "bird", "car", "cat", "dog", "person")
metainfo = dict(classes=classes)
backend_args = None

source = "voc"
eval_splits = dict(voc="test", watercolor="test", comic="test")
# The VOC years are one domain: its file names start with VOC2007/ or VOC2012/.
image_dirs = dict(
    voc=f"{image_root}VOCdevkit/",
    watercolor=f"{image_root}watercolor/JPEGImages/",
    comic=f"{image_root}comic/JPEGImages/",
)

# Short side 600, long side at most 1333, horizontal flip (DESIGN §3).
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(1333, 600), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="Resize", scale=(1333, 600), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]

# Each domain's dataset on the split it is scored on; `clipgap evaluate --domain` picks one.
eval_datasets = {
    domain: dict(
        type=dataset_type,
        metainfo=metainfo,
        ann_file=f"{data_root}annotations/{domain}_{split}.json",
        data_prefix=dict(img=image_dirs[domain]),
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
        ann_file=f"{data_root}annotations/{source}_trainval.json",
        data_prefix=dict(img=image_dirs[source]),
        # VOC images without any of the 6 classes carry no annotation: leave them out.
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
