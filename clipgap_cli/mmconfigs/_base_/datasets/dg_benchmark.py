# What the domain-generalisation benchmarks share (dwd.py, voc_to_art.py, synth.py): COCO-format
# json of a VOC-XML tree (`clipgap data convert` or `clipgap data synth`), train on the source
# domain's training split, select checkpoints on its evaluation split (the val_dataloader),
# VOC07 11-point AP50. clipgap's stages replace `ann_file`, `data_prefix` and the classes of
# each dataset with the dataset's clipgap-data.json, and `clipgap evaluate` points the test
# dataset at each domain's evaluation split; the paths below are defaults for plain mmdet.
dataset_type = "CocoDataset"
backend_args = None

# Short side 600, long side at most 1333, horizontal flip (docs/method.md).
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

train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    batch_sampler=dict(type="AspectRatioBatchSampler"),
    dataset=dict(
        type=dataset_type,
        # The reference drops images without objects from training too.
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
    dataset=dict(type=dataset_type, test_mode=True, pipeline=test_pipeline, backend_args=backend_args),
)
test_dataloader = val_dataloader

val_evaluator = dict(type="VOCMetric", metric="mAP", eval_mode="11points")
test_evaluator = val_evaluator
