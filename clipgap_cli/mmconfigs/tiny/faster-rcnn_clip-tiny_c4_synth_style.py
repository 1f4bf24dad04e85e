# ./faster-rcnn_clip-tiny_c4_synth.py with the style form of the semantic augmentations
# (`optimize-augs --form style`): the styles restyle the backbone's map at their stage, in
# training, and every BatchNorm after it keeps its stored statistics (`norm_eval=True` in the
# backbone and in V_b), so that no batch's statistics undo a restyling.
_base_ = "./faster-rcnn_clip-tiny_c4_synth.py"

model = dict(
    backbone=dict(norm_eval=True, augmentation=dict(type="SemanticAugmentation", offsets=None, prob=0.5)),
    neck=None,
    roi_head=dict(shared_head=dict(norm_eval=True)),
)
