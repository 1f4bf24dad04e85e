"""clipgap installed from its wheel, outside the source tree, has its MMDetection configs:
`clipgap train --detector` trains from them."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_wheel_ships_the_configs_and_trains_with_detector(tmp_path, synth_data):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", tmp_path / "dist", ROOT],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("clipgap-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([venv / "bin" / "python", "-c", purelib], text=True).strip())
    # The stack of this environment, without its clipgap: a path in a .pth file adds that directory
    # only, not the .pth files in it (among them the one of an editable clipgap).
    (site / "stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, wheel], check=True
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    work = tmp_path / "elsewhere"
    work.mkdir()

    def clipgap(*args):
        command = [venv / "bin" / "python", "-m", "clipgap_cli", *map(str, args)]
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]

    where = subprocess.check_output(
        [venv / "bin" / "python", "-c", "import clipgap_cli; print(clipgap_cli.__file__)"], cwd=work, env=env,
        text=True,
    )  # fmt: skip
    assert Path(where.strip()).is_relative_to(site)
    clipgap("encode-prompts", "--default-prompts", "--clip", "RN-tiny", "--run", "run")
    clipgap("train", "--run", "run", "--data", synth_data, "--detector", "gridclip", "--device", "cpu",
            "--max-iters", 1, "--cfg-options", "train_dataloader.batch_size=1",
            "--cfg-options", "train_dataloader.num_workers=0",
            "--cfg-options", "train_dataloader.persistent_workers=False")  # fmt: skip
    manifest = json.loads((work / "run" / "manifest.json").read_text())["artifacts"]
    config = manifest["train/clipgap_config.py"]["options"]["config"]
    assert Path(config).is_relative_to(site / "clipgap_cli" / "mmconfigs")
    assert "train/iter_1.pth" in manifest
