# The synthetic benchmark (docs/data.md), made with
#   clipgap data synth data/synth
# which writes the images, their COCO json and clipgap-data.json under `data_root`, a path
# prefix (absolute or relative to the working directory). Same domains, classes and protocol
# as the Diverse Weather Dataset (dwd.py), at the images' native size.
_base_ = "./dg_benchmark.py"

data_root = "data/synth/"
classes = ("bus", "bike", "car", "motor", "person", "rider", "truck")
metainfo = dict(classes=classes)
images = f"{data_root}voc/daytime_clear/VOC2007/JPEGImages/"

# A scale factor of 1 keeps the native size and records it for rescaling the predictions.
# The pipelines are written whole: mmengine's inheritance replaces a list, it cannot change one step.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale_factor=1.0, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale_factor=1.0, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]

annotations = f"{data_root}annotations/daytime_clear_"  # + the split's name
train_dataloader = dict(
    dataset=dict(
        metainfo=metainfo,
        ann_file=f"{annotations}train.json",
        data_prefix=dict(img=images),
        pipeline=train_pipeline,
    )
)
val_dataloader = dict(
    dataset=dict(
        metainfo=metainfo,
        ann_file=f"{annotations}test.json",
        data_prefix=dict(img=images),
        pipeline=test_pipeline,
    )
)
test_dataloader = val_dataloader
