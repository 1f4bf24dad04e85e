"""Checkpoints and bundles in the format clipgap wrote before its text classifier was shared by
both heads (commit 5cec394), for the test that they still load and predict the same boxes.

The fixtures in `fixtures/old_format/` keep what such files hold that is small: a bundle's
`config.py` and `bundle.json`, the checkpoint's tensor names and shapes, and the detections
that clipgap made of them then on one image. The weights themselves are rebuilt here, the same at every
commit: the CLIP parts from the RN-tiny model every clipgap draws under one seed, the class
text embeddings and augmentation means from the bundle's config, every other tensor from a
generator seeded by its name. `python tests/old_format.py OUT` remade the fixtures, run
with the package of commit 5cec394 on the path.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures" / "old_format"
IMAGE = "scene.jpg"  # a synthetic night_rainy scene, beside the fixtures
# Per detector: its tiny config and its test score threshold (0: every image has detections).
DETECTORS = {
    "clipgap": ("tiny/faster-rcnn_clip-tiny_c4_synth.py", "model.test_cfg.rcnn.score_thr"),
    "gridclip": ("tiny/gridclip_clip-tiny_fpn_synth_aug.py", "model.test_cfg.score_thr"),
}
CLIP_PARTS = (
    "backbone.",
    "roi_head.shared_head.",
)  # state-dict prefixes of the copies of CLIP's image encoder


def state_dict(shapes: dict[str, list[int]], given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors `shapes` (name -> shape): `given` ones as they are, CLIP's from
    RN-tiny, BatchNorm counters 0, scales and biases 0.5, the others normal(0, 0.01) from a
    generator seeded by the name."""
    from clipgap_cli.clip.model import load_clip

    visual = load_clip("RN-tiny", None).visual.state_dict()
    tensors = {}
    for name, shape in shapes.items():
        part = next((name.removeprefix(p) for p in CLIP_PARTS if name.startswith(p)), None)
        if name in given:
            tensor = given[name]
        elif part in visual:
            tensor = visual[part]
        elif name.endswith("num_batches_tracked"):
            tensor = torch.tensor(0)
        elif name.endswith(("scale", "bias")):  # positive, or FCOS's boxes would have no size
            tensor = torch.full(shape, 0.5)
        else:
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            tensor = torch.randn(shape, generator=generator) * 0.01
        assert list(tensor.shape) == shape, name
        tensors[name] = tensor.clone()
    return tensors


def detections(predictions) -> list[list[dict]]:
    """`predict`'s predictions as json: per image, its 20 best detections."""
    return [p.detections[:20] for p in predictions]


def main(out: Path) -> None:
    """Make the fixtures with the clipgap on the path (that of commit 5cec394)."""
    import tempfile

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
    from clipgap_cli.data.synth import synthesize
    from clipgap_cli.io import atomic_write
    from clipgap_cli.rundir import Run
    from clipgap_cli.stages.encode_prompts import encode_prompts
    from clipgap_cli.stages.export import export
    from clipgap_cli.stages.optimize_augs import optimize_augs
    from clipgap_cli.stages.predict import predict
    from clipgap_cli.stages.train import CONFIGS, compose_config, record_checkpoints

    register_all_modules()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        synthesize(data, seed=0, images_per_domain=8, size=128)
        out.mkdir(parents=True, exist_ok=True)
        image = out / IMAGE
        image.write_bytes(
            min((data / "voc" / "night_rainy" / "VOC2007" / "JPEGImages").glob("*.jpg")).read_bytes()
        )
        for detector, (config, score_thr) in DETECTORS.items():
            run = tmp / detector
            encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-tiny", pretrained=None,
                           class_template="{}")  # fmt: skip
            optimize_augs(run, data, iters=1, crops_per_iter=2)
            cfg, record = compose_config(Run.open(run), CONFIGS / config, data, cfg_options={score_thr: 0.0})
            model_state = MODELS.build(cfg.model).state_dict()
            shapes = {name: list(t.shape) for name, t in model_state.items()}
            given = {n: t for n, t in model_state.items() if n.endswith(("class_embeddings", "offset_means"))}
            classes = list(cfg.train_dataloader.dataset.metainfo["classes"])
            checkpoint = {
                "meta": {"dataset_meta": {"classes": classes}},
                "state_dict": state_dict(shapes, given),
            }
            (run / "train").mkdir()
            atomic_write(
                run / "train" / "clipgap_config.py", lambda p, cfg=cfg: p.write_text(cfg.pretty_text)
            )
            torch.save(checkpoint, run / "train" / "iter_1.pth")
            record_checkpoints(Run.open(run), **record)
            bundle = export(run, tmp / f"{detector}-bundle", checkpoint="last").root
            found = {
                "checkpoint": detections(predict(run, [image], tmp / "p1", score_thr=0.0, checkpoint="last")),
                "bundle": detections(predict(bundle, [image], tmp / "p2", score_thr=0.0)),
            }
            target = out / detector
            target.mkdir(parents=True, exist_ok=True)
            (target / "config.py").write_text((bundle / "config.py").read_text())
            (target / "bundle.json").write_text((bundle / "bundle.json").read_text())
            (target / "state_dict.json").write_text(json.dumps(shapes, indent=0) + "\n")
            (target / "detections.json").write_text(json.dumps(found) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
