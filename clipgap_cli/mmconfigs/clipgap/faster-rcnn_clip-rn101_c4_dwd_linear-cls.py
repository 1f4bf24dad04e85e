# Ablation: a trainable linear classifier, Linear(D, K + 1) on the region embedding, instead
# of the cosine to the frozen class text embeddings.
_base_ = "./faster-rcnn_clip-rn101_c4_dwd.py"

model = dict(roi_head=dict(bbox_head=dict(classifier="linear")))
