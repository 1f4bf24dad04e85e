# Pascal VOC to Watercolor2k and Comic2k (the reference's real-to-art benchmark), prepared with
#   clipgap data convert <root> --out data/voc_to_art
# where <root> holds VOCdevkit/ (VOC2007, VOC2012), watercolor/ and comic/. `data_root` gets
# the COCO json; the images stay in `image_root`. Both are path prefixes, absolute or relative
# to the working directory.
# Protocol: the 6 classes VOC and the art sets share; train on VOC 2007+2012 trainval, select
# checkpoints on VOC2007 test, score the art domains on their test lists, VOC07 11-point AP50.
_base_ = "./dg_benchmark.py"

data_root = "data/voc_to_art/"
image_root = "data/"
classes = ("bicycle", "bird", "car", "cat", "dog", "person")
metainfo = dict(classes=classes)
# The VOC years are one domain: its file names start with VOC2007/ or VOC2012/.
images = f"{image_root}VOCdevkit/"

annotations = f"{data_root}annotations/voc_"  # + the split's name
train_dataloader = dict(
    dataset=dict(metainfo=metainfo, ann_file=f"{annotations}trainval.json", data_prefix=dict(img=images))
)
val_dataloader = dict(
    dataset=dict(metainfo=metainfo, ann_file=f"{annotations}test.json", data_prefix=dict(img=images))
)
test_dataloader = val_dataloader
