# Diverse Weather Dataset (docs/data.md), prepared with
#   clipgap data convert <DiverseWeather root> --out data/dwd
# which writes COCO json (boxes as docs/data.md says) to `data_root` and leaves the images
# in the untouched tree `image_root`. Both are path prefixes, absolute or relative to the
# working directory.
# Published protocol: train on daytime_clear/train, select checkpoints on daytime_clear/test,
# score every target domain on its train list, with VOC07 11-point AP50.
_base_ = "./dg_benchmark.py"

data_root = "data/dwd/"
image_root = "data/DiverseWeather/"
classes = ("bus", "bike", "car", "motor", "person", "rider", "truck")
metainfo = dict(classes=classes)
images = f"{image_root}daytime_clear/VOC2007/JPEGImages/"

annotations = f"{data_root}annotations/daytime_clear_"  # + the split's name
train_dataloader = dict(
    dataset=dict(metainfo=metainfo, ann_file=f"{annotations}train.json", data_prefix=dict(img=images))
)
val_dataloader = dict(
    dataset=dict(metainfo=metainfo, ann_file=f"{annotations}test.json", data_prefix=dict(img=images))
)
test_dataloader = val_dataloader
