"""benchmarks/gpu.py: its plan on any machine; without a GPU, a one-line refusal."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def gpu_bench(*args):
    return subprocess.run(
        [sys.executable, "benchmarks/gpu.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_dry_run_prints_the_plan_from_the_configs():
    result = gpu_bench("--dry-run", "--steps", "7", "--out", "x.json")
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "mmconfigs/clipgap/faster-rcnn_clip-rn101_c4_dwd.py, batch 4 of 600x1000" in plan
    for form in ("token0", "all_tokens"):
        for precision in ("fp32", "bf16"):
            assert f"attnpool {form:10} {precision}: 7 steps" in plan
    assert (
        "gridclip/gridclip_clip-rn101_fpn_dwd.py against clipgap/faster-rcnn_clip-rn101_c4_dwd_no-aug.py"
        in plan
    )
    assert "RN101, 60 crops, 15 target prompts" in plan
    assert "200000 iterations x batch 4" in plan  # read from the config
    assert "writes x.json" in plan
    assert not (ROOT / "x.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only where there is no GPU")
def test_without_a_gpu_it_refuses_in_one_line():
    result = gpu_bench("--steps", "1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: benchmarks/gpu.py needs a CUDA GPU and torch sees none (--dry-run prints the plan)"
    ]
