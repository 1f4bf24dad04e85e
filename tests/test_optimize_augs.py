"""optimize-augs: the batched loss, what the learned offsets do, determinism, bad input."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error
from typer.testing import CliRunner

from clipgap_cli.artifacts import load_offsets, load_text_embeddings
from clipgap_cli.augmentation.objective import augmentation_loss, per_domain_loss, per_group_batch_norm
from clipgap_cli.cli import app
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import v_a, v_b, visual_dims
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import AUGS_LOSS_PLOT, AUGS_REPORT, MANIFEST, OFFSETS, Run
from clipgap_cli.stages.encode_prompts import encode_prompts
from clipgap_cli.stages.optimize_augs import SourceCrops, optimize_augs, source_images

QUICK = dict(iters=3, crops_per_iter=6)


def tiny_visual(train: bool):
    return copy.deepcopy(load_clip("RN-tiny", None).visual).train(train)


@pytest.mark.parametrize("bn_train", [True, False])
def test_batched_loss_equals_per_domain_loss(bn_train):
    torch.manual_seed(0)
    visual = tiny_visual(bn_train)
    dims = visual_dims(visual)
    features = torch.randn(6, dims.layer3_channels, dims.roi_size, dims.roi_size)
    offsets = (0.5 * torch.randn(4, *features.shape[1:])).requires_grad_(True)
    directions = F.normalize(torch.randn(4, dims.embed_dim), dim=-1)

    batched = augmentation_loss(visual, features, offsets, directions)
    (grad_batched,) = torch.autograd.grad(batched, offsets)
    plain = per_domain_loss(visual, features, offsets, directions)
    (grad_plain,) = torch.autograd.grad(plain, offsets)

    torch.testing.assert_close(batched, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_batched, grad_plain, rtol=1e-4, atol=1e-7)
    assert batched.item() > 0


def test_loss_is_the_design_formula_at_zero_offsets():
    # With A = 0, z_j = z0: the regulariser vanishes and each target costs 1 - <z0, q_j>.
    torch.manual_seed(1)
    visual = tiny_visual(False)
    dims = visual_dims(visual)
    features = torch.randn(5, dims.layer3_channels, dims.roi_size, dims.roi_size)
    directions = F.normalize(torch.randn(3, dims.embed_dim), dim=-1)
    with torch.no_grad():
        z0 = F.normalize(v_b(visual, features), dim=-1)
        expected = sum((1 - (z0 * F.normalize(z0 + d, dim=-1)).sum(-1)).mean() for d in directions) / 4
        loss = augmentation_loss(visual, features, torch.zeros(3, *features.shape[1:]), directions)
    torch.testing.assert_close(loss, expected)


def test_per_group_batch_norm_is_restored_and_matches_separate_batches():
    visual = tiny_visual(True)
    dims = visual_dims(visual)
    x = torch.randn(2, 3, dims.layer3_channels, dims.roi_size, dims.roi_size)
    with torch.no_grad(), per_group_batch_norm(visual, groups=2):
        grouped = v_b(visual, x.flatten(0, 1))
    with torch.no_grad():
        separate = torch.cat([v_b(visual, x[0]), v_b(visual, x[1])])
    torch.testing.assert_close(grouped, separate, rtol=1e-5, atol=1e-5)
    assert all("forward" not in vars(m) for m in visual.modules())


def test_crops_follow_the_reference_geometry(synth_data):
    images = source_images(synth_data)
    crops = SourceCrops(images, crop_size=400, image_size=128).sample(20, np.random.default_rng(0))
    assert crops.shape == (20, 3, 128, 128)
    # CLIP-normalised pixels: roughly zero-centred, within the range of (0..255 - mean) / std.
    assert -2.0 < crops.min() < crops.max() < 2.2


def test_optimised_offsets_move_embeddings_towards_the_target_prompts(tiny_run, synth_data):
    result = optimize_augs(tiny_run, synth_data, iters=40, crops_per_iter=15, seed=0)
    assert result.changed
    losses = result.losses
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses

    for a in result.alignment:
        assert a.cos_to_target_after > a.cos_to_target_before, a
        assert a.cos_to_direction_after > 0.2, a

    # Towards the target prompt, not the source: the shift raises similarity to t_j more than to t_s.
    run = Run.open(tiny_run)
    text = load_text_embeddings(run)
    offsets = load_offsets(run)["offsets"]
    visual = tiny_visual(True)
    crops = SourceCrops(source_images(synth_data), 400, 128).sample(30, np.random.default_rng(9))
    with torch.no_grad():
        f = v_a(visual, crops)
        z0 = F.normalize(v_b(visual, f), dim=-1)
        with per_group_batch_norm(visual, groups=len(offsets)):
            z = F.normalize(v_b(visual, (f[None] + offsets[:, None]).flatten(0, 1)), dim=-1)
    z = z.view(len(offsets), len(f), -1)
    gain_target = ((z - z0) * text.targets[:, None]).sum(-1).mean(1)  # (M,)
    gain_source = ((z - z0) @ text.source).mean(1)  # (M,)
    assert (gain_target > gain_source).all(), (gain_target, gain_source)


def test_artifacts_are_recorded_and_rerun_is_a_noop(tiny_run, synth_data):
    optimize_augs(tiny_run, synth_data, **QUICK)
    run = Run.open(tiny_run)
    offsets = load_offsets(run)
    text = load_text_embeddings(run)
    dims = visual_dims(load_clip("RN-tiny", None).visual)
    assert offsets["offsets"].shape == (15, dims.layer3_channels, dims.roi_size, dims.roi_size)
    torch.testing.assert_close(offsets["offset_means"], offsets["offsets"].mean(dim=(2, 3)))
    assert offsets["target_prompts"] == text.target_prompts
    for rel in (OFFSETS, AUGS_REPORT, AUGS_LOSS_PLOT):
        artifact = run.artifact(rel)
        assert artifact.stage == "optimize-augs" and artifact.clip == text.clip
        assert artifact.inputs == {
            "prompts/text_embeddings.pt": run.artifact("prompts/text_embeddings.pt").sha256
        }
    report = json.loads(run.path(AUGS_REPORT).read_text())
    assert len(report["losses"]) == 3 and len(report["alignment"]) == 15
    assert run.path(AUGS_LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = run.path(MANIFEST).read_bytes()
    assert not optimize_augs(tiny_run, synth_data, **QUICK).changed
    assert run.path(MANIFEST).read_bytes() == manifest
    assert optimize_augs(tiny_run, synth_data, **QUICK, force=True).changed


def test_same_seed_same_offsets(tmp_path, tiny_run, synth_data):
    other = tmp_path / "other"
    encode_prompts(other, load_text_embeddings(tiny_run).target_prompts, clip="RN-tiny", pretrained=None)
    optimize_augs(tiny_run, synth_data, **QUICK, seed=3)
    optimize_augs(other, synth_data, **QUICK, seed=3)
    a = load_offsets(Run.open(tiny_run))["offsets"]
    assert torch.equal(a, load_offsets(Run.open(other))["offsets"])
    optimize_augs(other, synth_data, **QUICK, seed=4)
    assert not torch.equal(a, load_offsets(Run.open(other))["offsets"])


def test_interruption_keeps_the_previous_offsets(tiny_run, synth_data):
    optimize_augs(tiny_run, synth_data, **QUICK)
    run = Run.open(tiny_run)
    before = run.path(OFFSETS).read_bytes()

    def interrupt(step, loss):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optimize_augs(tiny_run, synth_data, **QUICK, force=True, seed=5, on_step=interrupt)
    assert run.verified_path(OFFSETS).read_bytes() == before


def test_refuses_a_run_without_text_embeddings(tmp_path, synth_data):
    Run.create(tmp_path / "run")
    with pytest.raises(
        ClipgapError, match=r"has no prompts/text_embeddings\.pt; run `clipgap encode-prompts`"
    ):
        optimize_augs(tmp_path / "run", synth_data, **QUICK)


def test_refuses_weights_of_another_clip_model(tmp_path, synth_data):
    weights = tmp_path / "tiny.pt"
    torch.save(load_clip("RN-tiny", None).state_dict(), weights)
    run = tmp_path / "run"
    encode_prompts(run, ["an image taken at night"], clip="RN-tiny", pretrained=weights)
    other = tmp_path / "other.pt"
    state = load_clip("RN-tiny", None).state_dict()
    state["visual.attnpool.c_proj.bias"] = state["visual.attnpool.c_proj.bias"] + 1
    torch.save(state, other)
    with pytest.raises(ClipgapError, match="use one CLIP model for the whole run"):
        optimize_augs(run, synth_data, **QUICK, pretrained=other)
    with pytest.raises(ClipgapError, match="--pretrained"):
        optimize_augs(run, synth_data, **QUICK)
    assert Run.open(run).artifact(OFFSETS) is None


def test_refuses_a_dataset_without_usable_images(tmp_path, tiny_run, synth_data):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data, ignore=shutil.ignore_patterns("*.jpg"))
    with pytest.raises(ClipgapError, match="the dataset has no usable images"):
        optimize_augs(tiny_run, data, **QUICK)


def test_cli_runs_and_reports(tiny_run, synth_data):
    result = CliRunner().invoke(
        app,
        [
            "optimize-augs",
            "--run",
            str(tiny_run),
            "--data",
            str(synth_data),
            "--iters",
            "2",
            "--crops-per-iter",
            "4",
            "--device",
            "cpu",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "an image taken on a fog night" in result.stdout
    assert "cos(z_j, q_j)" in result.stdout
    assert Run.open(tiny_run).verified(OFFSETS)


def test_cli_bad_input_is_one_line(tmp_path, synth_data):
    result = CliRunner().invoke(
        app, ["optimize-augs", "--run", str(tmp_path / "none"), "--data", str(synth_data)]
    )
    assert_one_line_error(result, "does not exist")
