"""Builds clipgap's environments from nothing: `nox -s tests`, `nox -s lint`.

Order matters: torch first, then mmcv compiled against it (its C++ ops link to that exact
torch), then clipgap. The mmcv build takes about 15 minutes on two cores, so the wheel is
cached outside the clone, keyed on Python, torch and the kind of build (CPU or CUDA
arches). Environment variables:

  CLIPGAP_WHEEL_CACHE    where built mmcv wheels are kept (default ~/.cache/clipgap/wheels)
  FORCE_CUDA=1           build mmcv's CUDA ops too (needs nvcc); set TORCH_CUDA_ARCH_LIST,
                         e.g. "8.0;9.0", to the GPUs you run on
  MAX_JOBS               parallel compile jobs (default: the number of CPUs)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]

TORCH = ["torch==2.13.0", "torchvision==0.28.0"]
MMCV = "mmcv==2.1.0"
# mmcv's setup.py imports torch and pkg_resources, so it builds without isolation
# in an environment that already has both.
BUILD_TOOLS = ["setuptools<80", "wheel", "ninja", "psutil"]


def _install_torch(session: nox.Session) -> None:
    # Take torch from the package index: a local find-links folder may hold a CPU-only
    # torch build, against which the index's torchvision fails to import.
    with tempfile.TemporaryDirectory() as no_local_wheels:
        session.install(*TORCH, env={"PIP_FIND_LINKS": no_local_wheels})


def _mmcv_cache_key(session: nox.Session) -> str:
    probe = (
        "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')"
    )
    key = session.run("python", "-c", probe, silent=True).strip().splitlines()[-1]
    if os.environ.get("FORCE_CUDA") == "1":
        arches = os.environ.get("TORCH_CUDA_ARCH_LIST", "auto").replace(";", "_").replace(" ", "_")
        return f"{key}-cuda-{arches}"
    return f"{key}-cpu"


def _install_mmcv(session: nox.Session) -> None:
    root = Path(os.environ.get("CLIPGAP_WHEEL_CACHE", Path.home() / ".cache" / "clipgap" / "wheels"))
    cache = root / _mmcv_cache_key(session)
    wheels = sorted(cache.glob("mmcv-2.1.0-*.whl"))
    if not wheels:
        session.log(f"building {MMCV} with its ops (about 15 minutes on two cores) into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        env = {"MMCV_WITH_OPS": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count()))}
        with tempfile.TemporaryDirectory(dir=cache) as build_dir:
            # --no-cache-dir: pip's own wheel cache is not keyed on torch and would hand
            # back a wheel built against another torch.
            session.run(
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
