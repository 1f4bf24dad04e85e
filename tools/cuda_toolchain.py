"""The CUDA toolchain for mmcv's CUDA ops: which nvcc builds them, for which GPU architectures.

The nox sessions run it inside the environment they build, when FORCE_CUDA=1 (noxfile.py):

    python tools/cuda_toolchain.py plan        # JSON: pip packages to install, arch list, why
    python tools/cuda_toolchain.py env         # JSON: CUDA_HOME and PATH for mmcv's build
    python tools/cuda_toolchain.py check-mmcv  # fails unless mmcv.ops has CUDA ops for torch's CUDA

torch's extension builder takes nvcc from CUDA_HOME (else from PATH) and refuses or misbuilds
with a CUDA release other than torch's. When the nvcc found is not torch's major.minor, or
there is none, PyPI's CUDA component wheels provide one: since CUDA 13 they all unpack into
`site-packages/nvidia/cu<major>/` (`bin/nvcc`, `include/`, `lib/`, `nvvm/`), a tree nvcc
itself reads as a toolkit. Only the standard library is imported at module level: the
decisions are plain functions, tested without torch or a compiler (tests/test_cuda_toolchain.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

# PyPI's nvcc wheel holds the compiler itself only from CUDA 13 on (nvidia-cuda-nvcc-cu12
# ships ptxas alone, NVIDIA/cuda-python#2100).
PIP_NVCC_FROM = 13
# nvcc, its front end (nvvm: cicc, libdevice), the headers it includes by itself (crt; cccl:
# nv/target, cuda/std, thrust, cub) and the runtime mmcv links (torch already depends on it).
PIP_PACKAGES = (
    "nvidia-cuda-nvcc",
    "nvidia-cuda-crt",
    "nvidia-cuda-cccl",
    "nvidia-nvvm",
    "nvidia-cuda-runtime",
)


class ToolchainError(Exception):
    """No usable toolchain: the message says what to do."""


class Plan(NamedTuple):
    packages: tuple[str, ...]  # pip requirements to install first; () when the nvcc found fits
    cuda_home: str | None  # the toolkit whose nvcc fits; None: PyPI's, once installed
    reason: str


def major_minor(version: str) -> str:
    """'13.0.88' -> '13.0'."""
    return ".".join(version.split(".")[:2])


def find_nvcc(environ: Mapping[str, str]) -> str | None:
    """The nvcc torch's extension builder would use: $CUDA_HOME (or $CUDA_PATH)/bin/nvcc, else
    the first on PATH."""
    home = environ.get("CUDA_HOME") or environ.get("CUDA_PATH")
    if home:
        nvcc = Path(home, "bin", "nvcc")
        return str(nvcc) if nvcc.is_file() else None
    return shutil.which("nvcc", path=environ.get("PATH", ""))


class Nvcc(NamedTuple):
    path: str
    release: str | None  # the CUDA release it reports, e.g. '13.0'; None if it does not run
    home: str  # its toolkit's root (CUDA_HOME): the folder above the real nvcc's bin/


def probe_nvcc(path: str) -> Nvcc:
    """What `path` is: its release from `nvcc --version`, its root from the `_HERE_` that
    `--dryrun` prints (a wrapper script such as /usr/local/bin/nvcc points elsewhere)."""

    def output(*args: str) -> str:
        try:
            result = subprocess.run([path, *args], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return ""
        return result.stdout + result.stderr

    release = re.search(r"release (\d+\.\d+)", output("--version"))
    here = re.search(r"^#\$ _HERE_=(.+)$", output("--dryrun", "-E", "-x", "cu", os.devnull), re.M)
    home = Path(here.group(1).strip()).parent if here else Path(path).resolve().parent.parent
    return Nvcc(path, release.group(1) if release else None, str(home))


def plan(torch_cuda: str | None, nvcc: Nvcc | None) -> Plan:
    """Which nvcc builds mmcv for torch's CUDA `torch_cuda` (torch.version.cuda), given the nvcc
    found (`find_nvcc`, `probe_nvcc`), or None."""
    if torch_cuda is None:
        raise ToolchainError(
            "FORCE_CUDA=1 but this torch is a CPU-only build (torch.version.cuda is None): "
            "install a CUDA build of torch, e.g. PyPI's default"
        )
    want = major_minor(torch_cuda)
    if nvcc is not None and nvcc.release == want:
        return Plan((), nvcc.home, f"nvcc {nvcc.release} at {nvcc.path} matches torch's CUDA")
    if nvcc is None:
        found = "no nvcc on PATH"
    else:
        found = f"nvcc at {nvcc.path} is CUDA {nvcc.release}, torch's is {want}"
    if int(want.split(".")[0]) < PIP_NVCC_FROM:
        raise ToolchainError(
            f"{found}, and PyPI ships nvcc only for CUDA {PIP_NVCC_FROM} and newer: install the "
            f"CUDA {want} toolkit and put its nvcc on PATH (or set CUDA_HOME)"
        )
    packages = tuple(f"{name}=={want}.*" for name in PIP_PACKAGES)
    return Plan(packages, None, f"{found}: installing PyPI's nvcc for CUDA {want}")


def arch_list(requested: str | None, capabilities: Sequence[tuple[int, int]]) -> str:
    """TORCH_CUDA_ARCH_LIST: `requested` if set, else the visible GPUs' compute capabilities,
    e.g. [(9, 0)] -> '9.0'."""
    if requested:
        return requested
    if not capabilities:
        raise ToolchainError(
            "no GPU is visible to build mmcv's CUDA ops for: set TORCH_CUDA_ARCH_LIST to your GPUs' "
            "architectures, e.g. '8.0;9.0' (A100 and H100)"
        )
    return ";".join(f"{major}.{minor}" for major, minor in sorted(set(capabilities)))


def pip_cuda_home(site_packages: Path, torch_cuda: str) -> Path:
    """Where PyPI's CUDA wheels for `torch_cuda` unpack: site-packages/nvidia/cu<major>."""
    return site_packages / "nvidia" / f"cu{torch_cuda.split('.')[0]}"


def build_env(chosen: Plan, pip_home: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables mmcv's build needs to compile with the chosen nvcc (after `chosen.packages`
    are installed)."""
    home = Path(chosen.cuda_home) if chosen.cuda_home else pip_home
    if not (home / "bin" / "nvcc").is_file():
        raise ToolchainError(f"no nvcc at {home / 'bin' / 'nvcc'}: install {' '.join(chosen.packages)}")
    if chosen.cuda_home is None:
        link_cudart(home / "lib")
    return {"CUDA_HOME": str(home), "PATH": f"{home / 'bin'}{os.pathsep}{environ.get('PATH', '')}"}


def link_cudart(lib: Path) -> None:
    """torch links extensions with `-lcudart`, which needs `libcudart.so`; the runtime wheel
    ships only `libcudart.so.<major>` (a wheel holds no symlinks), so add the link."""
    link = lib / "libcudart.so"
    if link.exists():
        return
    versioned = sorted(lib.glob("libcudart.so.[0-9]*"))
    if not versioned:
        raise ToolchainError(f"no libcudart.so.* in {lib}: install nvidia-cuda-runtime")
    link.symlink_to(versioned[0].name)


def check_mmcv_cuda() -> str:
    """Raises unless mmcv.ops was compiled with CUDA ops for torch's CUDA release; runs one op
    on the GPU when one is visible. Returns what it checked."""
    import torch
    from mmcv.ops import get_compiling_cuda_version, nms

    compiled = get_compiling_cuda_version()  # 'not available' for a build without CUDA ops
    want = major_minor(torch.version.cuda or "none")
    if compiled == "not available":
        raise ToolchainError(
            "FORCE_CUDA=1 but mmcv.ops has no CUDA ops: delete the cached mmcv wheel and rebuild "
            f"with nvcc for CUDA {want}"
        )
    if major_minor(compiled) != want:
        raise ToolchainError(
            f"mmcv.ops was compiled for CUDA {compiled}, torch uses {want}: "
            "delete the cached wheel and rebuild"
        )
    if not torch.cuda.is_available():
        return f"mmcv.ops has CUDA {compiled} ops (no GPU visible: not run)"
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]], device="cuda")
    kept, _ = nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), iou_threshold=0.5)
    if kept.shape[0] != 1:
        raise ToolchainError(f"mmcv's CUDA nms kept {kept.shape[0]} of 2 overlapping boxes, not 1")
    return f"mmcv.ops has CUDA {compiled} ops; nms ran on {torch.cuda.get_device_name()}"


def _plan_here() -> Plan:
    import torch

    nvcc = find_nvcc(os.environ)
    return plan(torch.version.cuda, probe_nvcc(nvcc) if nvcc else None)


def main(argv: Sequence[str]) -> int:
    command = argv[0] if argv else ""
    try:
        if command == "plan":
            import torch

            chosen = _plan_here()
            capabilities = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
            arches = arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"), capabilities)
            print(json.dumps({"packages": chosen.packages, "arch_list": arches, "reason": chosen.reason}))
        elif command == "env":
            import torch

            pip_home = pip_cuda_home(Path(sysconfig.get_paths()["purelib"]), torch.version.cuda or "")
            print(json.dumps(build_env(_plan_here(), pip_home, os.environ)))
        elif command == "check-mmcv":
            print(check_mmcv_cuda())
        else:
            print("usage: python tools/cuda_toolchain.py plan|env|check-mmcv", file=sys.stderr)
            return 2
    except ToolchainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
