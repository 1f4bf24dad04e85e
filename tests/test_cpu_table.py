"""benchmarks/cpu_table.py, the command behind docs/results/cpu-table.*: a smoke run at tiny size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipgap_cli.data.synth import SEVERITY
from clipgap_cli.rundir import TEXT_EMBEDDINGS, Run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu_table import QUICK, STYLE, STYLE_AUGMENTATION  # noqa: E402


@pytest.mark.timeout(900)
def test_the_table_command_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "benchmarks" / "cpu_table.py"), "--quick", "--seeds", "0",
               "--rows", "no-clip", "linear", "clip-t+aug", "clip-t+style", "--jobs", "1",
               "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((out / "cpu-table.json").read_text())
    summary = payload["summary"]
    assert summary["domains"][0] == "daytime_clear" and len(summary["targets"]) == 4
    assert summary["validation"] == list(QUICK.validation) and not set(summary["validation"]) & set(
        summary["targets"]
    )
    assert set(summary["rows"]) == {"no-clip", "linear", "clip-t+aug", "clip-t+style"}
    for row in summary["rows"].values():
        assert len(row["per_seed"]["targets"]) == 1
        for mean, std in (row[d] for d in [*summary["domains"], "targets", "validation"]):
            assert 0 <= mean <= 100 and std >= 0
    assert set(payload["retention"]) == {*summary["targets"], "targets"}
    everywhere = [*summary["targets"], *summary["validation"]]
    assert [d["domain"] for d in payload["diagnostic"]["offset"]] == everywhere
    assert set(payload["statistics"]) == {"offset", "style"}
    for mode in ("offset", "style"):
        assert [d["domain"] for d in payload["statistics"][mode]] == everywhere
        named = [d for d in payload["statistics"][mode] if d["prompt"]]  # night_sunny: no prompt names it
        assert len(named) == len(everywhere) - 1 and all(-10 < d["stage_std"][0] <= 1 for d in named)
    markdown = (out / "cpu-table.md").read_text()
    assert "| linear classifier (source-only baseline) |" in markdown and "| night_rainy |" in markdown
    assert "| no CLIP pretraining (random RN-synth weights, linear classifier) |" in markdown
    assert "validation's mean |" in markdown and "| style at layer1 | night_fog |" in markdown
    # The no-CLIP row's run names the random CLIP it was trained on.
    work = tmp_path / "work" / f"severity-{SEVERITY:g}"  # one directory per severity
    no_clip = Run.open(work / "seed0" / "no-clip").verified(TEXT_EMBEDDINGS).clip
    assert no_clip == {"model": "RN-synth", "pretrained": None, "sha256": None}
    assert markdown.splitlines()[6] in done.stdout  # the table is printed as written
    assert (out / "cpu-table.png").read_bytes().startswith(b"\x89PNG")

    # Every cell is kept: a second run trains nothing and gives the same table.
    cell = work / "seed0" / "linear" / "result.json"
    stamp = cell.stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "cpu-table.json").read_text())["summary"] == summary
    assert cell.stat().st_mtime_ns == stamp


def test_the_style_rows_use_the_settings_chosen_on_the_validation_conditions():
    chosen = json.loads((ROOT / "docs" / "results" / "augmentation-selection.json").read_text())
    assert STYLE == chosen["style"] and STYLE_AUGMENTATION == chosen["augmentation"]
