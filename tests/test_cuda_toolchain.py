"""The GPU install's decisions (tools/cuda_toolchain.py): which nvcc builds mmcv's CUDA ops, for
which architectures, and the environment the build gets. Nothing is compiled."""

import importlib.util
import os
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("cuda_toolchain", ROOT / "tools" / "cuda_toolchain.py")
toolchain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toolchain)
Nvcc, ToolchainError, plan = toolchain.Nvcc, toolchain.ToolchainError, toolchain.plan

PIP_13_0 = (
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
)


def test_a_matching_nvcc_is_used_and_nothing_installed():
    found = Nvcc("/usr/local/bin/nvcc", "13.0", "/usr/local/cuda-13.0")
    chosen = plan("13.0", found)
    assert chosen.packages == ()
    assert chosen.cuda_home == "/usr/local/cuda-13.0"
    assert "matches" in chosen.reason


def test_without_nvcc_pypis_nvcc_for_torchs_cuda_is_installed():
    chosen = plan("13.0", None)
    assert chosen.packages == PIP_13_0
    assert chosen.cuda_home is None
    assert "no nvcc on PATH" in chosen.reason


def test_an_nvcc_of_another_cuda_release_is_replaced_by_pypis():
    chosen = plan("13.0", Nvcc("/usr/local/cuda-12.4/bin/nvcc", "12.4", "/usr/local/cuda-12.4"))
    assert chosen.packages == PIP_13_0
    assert chosen.cuda_home is None
    assert "is CUDA 12.4, torch's is 13.0" in chosen.reason
    # The minor release counts too: torch's extension builder needs major.minor to match.
    assert (
        plan("13.2", Nvcc("/opt/cuda/bin/nvcc", "13.0", "/opt/cuda")).packages[0]
        == "nvidia-cuda-nvcc==13.2.*"
    )


def test_before_cuda_13_pypi_has_no_nvcc_so_it_asks_for_a_toolkit():
    with pytest.raises(
        ToolchainError, match="PyPI ships nvcc only for CUDA 13 and newer: install the CUDA 12.8"
    ):
        plan("12.8", Nvcc("/usr/bin/nvcc", "12.4", "/usr"))
    with pytest.raises(ToolchainError, match="no nvcc on PATH"):
        plan("12.8", None)


def test_a_cpu_only_torch_is_refused():
    with pytest.raises(ToolchainError, match="CPU-only build"):
        plan(None, None)


def test_arch_list_defaults_to_the_visible_gpus():
    assert toolchain.arch_list(None, [(9, 0)]) == "9.0"
    assert toolchain.arch_list("", [(9, 0), (8, 0), (9, 0)]) == "8.0;9.0"
    assert toolchain.arch_list("8.6", [(9, 0)]) == "8.6"  # TORCH_CUDA_ARCH_LIST wins
    with pytest.raises(ToolchainError, match="no GPU is visible.*set TORCH_CUDA_ARCH_LIST"):
        toolchain.arch_list(None, [])


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_nvcc_follows_torch_cuda_home_first_then_path(tmp_path):
    on_path = executable(tmp_path / "path" / "nvcc", "#!/bin/sh\n")
    home_nvcc = executable(tmp_path / "home" / "bin" / "nvcc", "#!/bin/sh\n")
    assert toolchain.find_nvcc({"PATH": str(on_path.parent)}) == str(on_path)
    env = {"PATH": str(on_path.parent), "CUDA_HOME": str(tmp_path / "home")}
    assert toolchain.find_nvcc(env) == str(home_nvcc)
    # A CUDA_HOME without nvcc is no toolkit, whatever PATH holds.
    assert toolchain.find_nvcc({"PATH": str(on_path.parent), "CUDA_HOME": str(tmp_path)}) is None
    assert toolchain.find_nvcc({"PATH": str(tmp_path / "nothing")}) is None


def test_probe_reads_the_release_and_the_real_root_of_a_wrapper(tmp_path):
    # As /usr/local/bin/nvcc wrapping /usr/local/cuda-13.0/bin/nvcc: the root is the toolkit's.
    wrapper = executable(
        tmp_path / "bin" / "nvcc",
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "Cuda compilation tools, release 13.0, V13.0.88"; fi\n'
        'if [ "$1" = --dryrun ]; then echo "#\\$ _HERE_=/opt/cuda-13.0/bin" >&2; fi\n',
    )
    assert toolchain.probe_nvcc(str(wrapper)) == Nvcc(str(wrapper), "13.0", "/opt/cuda-13.0")
    broken = executable(tmp_path / "broken" / "bin" / "nvcc", "#!/bin/sh\nexit 1\n")
    assert toolchain.probe_nvcc(str(broken)) == Nvcc(str(broken), None, str(tmp_path / "broken"))


def test_build_env_for_pypis_nvcc_links_cudart(tmp_path):
    home = tmp_path / "site-packages" / "nvidia" / "cu13"
    assert toolchain.pip_cuda_home(tmp_path / "site-packages", "13.0") == home
    chosen = plan("13.0", None)
    with pytest.raises(ToolchainError, match="no nvcc at .*install nvidia-cuda-nvcc==13.0"):
        toolchain.build_env(chosen, home, {"PATH": "/usr/bin"})
    executable(home / "bin" / "nvcc", "#!/bin/sh\n")
    (home / "lib").mkdir()
    (home / "lib" / "libcudart.so.13").write_bytes(b"")
    env = toolchain.build_env(chosen, home, {"PATH": "/usr/bin"})
    assert env == {"CUDA_HOME": str(home), "PATH": f"{home / 'bin'}{os.pathsep}/usr/bin"}
    # torch links extensions with -lcudart; the wheel has only the versioned library.
    assert os.readlink(home / "lib" / "libcudart.so") == "libcudart.so.13"
    assert toolchain.build_env(chosen, home, {"PATH": "/usr/bin"}) == env  # a second build: same


def test_build_env_for_a_matching_toolkit_points_at_it(tmp_path):
    executable(tmp_path / "cuda" / "bin" / "nvcc", "#!/bin/sh\n")
    chosen = plan("13.0", Nvcc("/usr/local/bin/nvcc", "13.0", str(tmp_path / "cuda")))
    env = toolchain.build_env(chosen, tmp_path / "unused", {"PATH": "/usr/bin"})
    assert env["CUDA_HOME"] == str(tmp_path / "cuda")
    assert not (tmp_path / "cuda" / "lib").exists()  # a toolkit's own tree is left alone
