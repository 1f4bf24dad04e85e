"""The installed stack: compiled mmcv ops on CPU, and the imports every stage relies on."""

import torch


def test_stack_imports():
    import mmcv.ops  # noqa: F401
    import mmdet.models  # noqa: F401
    import open_clip  # noqa: F401
    import torchvision  # noqa: F401


def test_mmcv_roi_align_runs_on_cpu():
    from mmcv.ops import RoIAlign

    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])  # (batch index, x1, y1, x2, y2)
    pooled = RoIAlign(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(features, rois)
    # Each output bin averages one 2x2 quadrant of the map.
    expected = features.reshape(1, 1, 2, 2, 2, 2).mean(dim=(3, 5))
    assert pooled.shape == (1, 1, 2, 2)
    torch.testing.assert_close(pooled, expected)


def test_mmcv_nms_runs_on_cpu():
    from mmcv.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    kept, indices = nms(boxes, scores, iou_threshold=0.5)
    assert indices.tolist() == [0, 2]
    assert kept.shape == (2, 5)


def test_tiny_clip_model_is_registered_and_offline():
    import open_clip

    import clipgap_cli.clip as clip

    assert clip.TINY_MODEL in open_clip.list_models()
    model = open_clip.create_model(clip.TINY_MODEL, pretrained=None).eval()
    tokens = open_clip.get_tokenizer(clip.TINY_MODEL)(["a photo of a car"])
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 128, 128)).shape == (2, 64)
        assert model.encode_text(tokens).shape == (1, 64)
    assert [len(layer) for layer in (model.visual.layer1, model.visual.layer4)] == [1, 1]
