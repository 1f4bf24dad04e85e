"""Builds clipgap's environments from nothing: `nox -s tests`, `nox -s lint`.

Order matters: torch first, then mmcv compiled against it (its C++ ops link to that exact
torch), then clipgap. The mmcv build takes about 15 minutes on two cores, so the wheel is
cached outside the clone, keyed on Python, torch and the kind of build (CPU or CUDA
arches). Environment variables:

  CLIPGAP_WHEEL_CACHE    where built mmcv wheels are kept (default ~/.cache/clipgap/wheels)
  FORCE_CUDA=1           build mmcv's CUDA ops too, with the nvcc on PATH (or in CUDA_HOME) if
                         it is torch's CUDA release, else PyPI's (tools/cuda_toolchain.py), and
                         check the result
  TORCH_CUDA_ARCH_LIST   the GPU architectures to compile for, e.g. "8.0;9.0" (default: those
                         of the visible GPUs)
  MAX_JOBS               parallel compile jobs (default: the number of CPUs)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]

TORCH = ["torch==2.13.0", "torchvision==0.28.0"]
MMCV = "mmcv==2.1.0"
# mmcv's setup.py imports torch and pkg_resources, so it builds without isolation
# in an environment that already has both.
BUILD_TOOLS = ["setuptools<80", "wheel", "ninja", "psutil"]
# Run inside the session's environment: its decisions need that environment's torch.
CUDA_TOOLCHAIN = "tools/cuda_toolchain.py"


def _install_torch(session: nox.Session) -> None:
    # Take torch from the package index: a local find-links folder may hold a CPU-only
    # torch build, against which the index's torchvision fails to import.
    with tempfile.TemporaryDirectory() as no_local_wheels:
        session.install(*TORCH, env={"PIP_FIND_LINKS": no_local_wheels})


def _mmcv_cache_key(session: nox.Session, cuda_arches: str | None) -> str:
    probe = (
        "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')"
    )
    # run_install: the probes must run under --install-only too, which skips session.run.
    key = session.run_install("python", "-c", probe, silent=True).strip().splitlines()[-1]
    if cuda_arches is not None:
        arches = cuda_arches.replace(";", "_").replace(" ", "_")
        return f"{key}-cuda-{arches}"
    return f"{key}-cpu"


def _cuda_toolchain(session: nox.Session, command: str) -> dict:
    out = session.run_install("python", CUDA_TOOLCHAIN, command, silent=True)
    return json.loads(out.strip().splitlines()[-1])


def _cuda_build_env(session: nox.Session, cuda: dict) -> dict[str, str]:
    """Installs PyPI's nvcc if `cuda` (the toolchain's plan) says so; the build's variables."""
    session.log(cuda["reason"])
    if cuda["packages"]:
        session.install(*cuda["packages"])
    return {**_cuda_toolchain(session, "env"), "TORCH_CUDA_ARCH_LIST": cuda["arch_list"]}


def _install_mmcv(session: nox.Session) -> None:
    cuda = _cuda_toolchain(session, "plan") if os.environ.get("FORCE_CUDA") == "1" else None
    root = Path(os.environ.get("CLIPGAP_WHEEL_CACHE", Path.home() / ".cache" / "clipgap" / "wheels"))
    cache = root / _mmcv_cache_key(session, cuda and cuda["arch_list"])
    wheels = sorted(cache.glob("mmcv-2.1.0-*.whl"))
    if not wheels:
        session.log(f"building {MMCV} with its ops (about 15 minutes on two cores) into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        env = {"MMCV_WITH_OPS": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count()))}
        if cuda:
            env.update(_cuda_build_env(session, cuda))
        with tempfile.TemporaryDirectory(dir=cache) as build_dir:
            # --no-cache-dir: pip's own wheel cache is not keyed on torch and would hand
            # back a wheel built against another torch.
            session.run_install(
                "pip",
                "wheel",
                "--no-build-isolation",
                "--no-deps",
                "--no-cache-dir",
                "--wheel-dir",
                build_dir,
                MMCV,
                env=env,
            )
            built = next(Path(build_dir).glob("mmcv-*.whl"))
            os.replace(built, cache / built.name)  # atomic: an interrupted build caches nothing
        wheels = sorted(cache.glob("mmcv-2.1.0-*.whl"))
    else:
        session.log(f"reusing {wheels[-1]}")
    session.install("--no-deps", str(wheels[-1]))


def install_stack(session: nox.Session, extras: str) -> None:
    """torch, then mmcv built against it, then clipgap with `extras`."""
    session.install(*BUILD_TOOLS)
    _install_torch(session)
    _install_mmcv(session)
    session.install("-e", f".[{extras}]")
    if os.environ.get("FORCE_CUDA") == "1":
        session.run_install(
            "python", CUDA_TOOLCHAIN, "check-mmcv"
        )  # mmcv.ops needs mmengine, installed just now


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, offline, on CPU."""
    install_stack(session, "test")
    session.run("pytest", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(name="gpu-bench")
def gpu_bench(session: nox.Session) -> None:
    """benchmarks/gpu.py on this machine's GPU: a table, and gpu-bench.json (needs FORCE_CUDA=1)."""
    if os.environ.get("FORCE_CUDA") != "1":
        session.error("gpu-bench needs mmcv's CUDA ops: run FORCE_CUDA=1 python3 -m nox -s gpu-bench")
    install_stack(session, "test")
    session.run("python", "benchmarks/gpu.py", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


# The demo's sizes: small enough that the whole session, environment included, takes under
# 10 minutes on two CPU cores (docs/reproducing.md records a measured run), large enough for
# a detector that detects.
DEMO_DIR = Path("runs/demo")
DEMO_IMAGES_PER_DOMAIN = 100
DEMO_SIZE = 256
DEMO_CONFIG = "tiny/faster-rcnn_clip-synth_c4_aug_quick.py"  # 400 iterations: a third of the CPU table's
DEMO_AUG_ITERS, DEMO_AUG_CROPS = 100, 16


@nox.session
def demo(session: nox.Session) -> None:
    """The quick start: a synthetic benchmark, prompts from RN-synth, semantic augmentations,
    a CPU training with them, the evaluation of every domain, an exported bundle and its
    predictions on source and night-rain images, in a fresh runs/demo."""
    install_stack(session, "test")
    shutil.rmtree(DEMO_DIR, ignore_errors=True)  # a fresh run every time: stages refuse to overwrite
    data, run = DEMO_DIR / "data", DEMO_DIR / "run"
    env = {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}  # the CPU, as measured

    def clipgap(*args: object) -> None:
        session.run("clipgap", *map(str, args), env=env)

    clipgap("data", "synth", data, "--images-per-domain", DEMO_IMAGES_PER_DOMAIN, "--size", DEMO_SIZE)
    clipgap("encode-prompts", "--default-prompts", "--clip", "RN-synth", "--run", run)
    clipgap("optimize-augs", "--run", run, "--data", data, "--iters", DEMO_AUG_ITERS,
            "--crops-per-iter", DEMO_AUG_CROPS)  # fmt: skip
    clipgap("train", "--run", run, "--data", data, "--config", DEMO_CONFIG, "--device", "cpu")
    clipgap("evaluate", "--run", run, "--data", data, "--domain", "all", "--device", "cpu")
    train_images = round(0.75 * DEMO_IMAGES_PER_DOMAIN)  # data synth's train list; targets are scored on it
    session.log(
        f"the table above rests on one training seed, {DEMO_IMAGES_PER_DOMAIN - train_images} source test "
        f"images and {train_images} images a target: a few points either way are noise; "
        "docs/results/cpu-table.md compares the methods over 3 seeds on larger test splits"
    )
    bundle = DEMO_DIR / "bundle"
    clipgap("export", "--run", run, "--out", bundle)
    for domain in ("daytime_clear", "night_rainy"):
        voc = data / "voc" / domain / "VOC2007"
        ids = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[:8]
        images = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
        clipgap("predict", bundle, *images, "--out", DEMO_DIR / "predictions" / domain,
                "--score-thr", 0.5, "--device", "cpu")  # fmt: skip
    session.log(f"run directory: {run.resolve()}, predictions: {(DEMO_DIR / 'predictions').resolve()}")
