# GridCLIP on LVIS-style data: COCO-format annotations with a long tail of classes (LVIS v1's
# 1203; docs/data.md says how to load LVIS's json), where the image-level alignment is meant
# to help the rare classes. On top of the COCO-format config, mmdet's LVIS recipe: repeat
# factor sampling (an image is repeated by the rarity of its rarest class, threshold 0.001),
# and at test time up to 300 detections an image down to a score of 0.0001, as LVIS is scored.
_base_ = "./gridclip_clip-rn101_fpn_coco.py"

model = dict(test_cfg=dict(score_thr=0.0001, max_per_img=300))
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type="ClassBalancedDataset",
        oversample_thr=1e-3,
        dataset={{_base_.train_dataloader.dataset}},
    )
)
