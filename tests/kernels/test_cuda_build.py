"""csrc/ compiles, with no GPU: the torch-free kernel library through CMake + ninja for sm_80 and sm_90a (and sm_100a)
with every warning an error, the torch launchers against the installed torch's headers, and the CMake switches
refuse what they cannot build with a clear message. Each build runs in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.helpers.cuda_toolchain import cuda_home

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = sorted((ROOT / "csrc" / "ops").glob("*.cpp"))
TORCH_INCLUDE = Path(torch.__file__).resolve().parent / "include"


def _toolchain() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("cmake", "ninja", "nvcc")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"building csrc/ needs {', '.join(missing)} on PATH (CUDA toolkit >= 12, CMake >= 3.24, ninja)")
    return tools


def _cmake(build: Path, *defs: str, build_too: bool = True) -> subprocess.CompletedProcess:
    tools = _toolchain()
    configure = [tools["cmake"], "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}", f"-DCMAKE_CUDA_COMPILER={tools['nvcc']}", *defs]
    res = subprocess.run(configure, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 or not build_too:
        return res
    jobs = str(os.cpu_count() or 2)
    return subprocess.run([tools["cmake"], "--build", str(build), "-j", jobs], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("archs", ["80;90a", "100a"])
def test_kernel_library_builds_without_warnings(tmp_path, archs):
    res = _cmake(tmp_path, f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    assert (tmp_path / "librpo_kernels_cuda.a").exists()
    assert "warning" not in log.lower(), log[-6000:]
    flags = (tmp_path / "build.ninja").read_text()
    for arch in archs.split(";"):
        assert f"code=[compute_{arch},sm_{arch}]" in flags, f"sm_{arch} missing from the nvcc flags"
    assert "--Werror=all-warnings" in flags and "-Xcompiler=-Wall,-Werror" in flags


def test_architectures_older_than_sm80_are_refused(tmp_path):
    res = _cmake(tmp_path, "-DCMAKE_CUDA_ARCHITECTURES=75", build_too=False)
    assert res.returncode != 0 and "need sm_80 or newer" in res.stdout + res.stderr


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch has CUDA here: test_torch_extension_builds runs")
def test_torch_extension_switch_refuses_cpu_torch(tmp_path):
    res = _cmake(tmp_path, "-DRPO_BUILD_TORCH_EXT=ON", f"-DPython3_EXECUTABLE={sys.executable}", build_too=False)
    assert res.returncode != 0 and "needs a CUDA-enabled PyTorch" in res.stdout + res.stderr


@pytest.mark.skipif(torch.version.cuda is None,
                    reason=f"the torch extension rpo_kernels/_C cannot build against the CPU-only torch "
                           f"{torch.__version__} (it links libtorch_cuda/libc10_cuda); build it where torch has "
                           "CUDA: cmake -S . -B build -G Ninja -DRPO_BUILD_TORCH_EXT=ON && cmake --build build")
def test_torch_extension_builds(tmp_path):
    out = tmp_path / "module"
    res = _cmake(tmp_path / "build", "-DRPO_BUILD_TORCH_EXT=ON", f"-DPython3_EXECUTABLE={sys.executable}",
                 f"-DRPO_EXT_OUTPUT_DIR={out}")
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert list(out.glob("_C*.so")), f"no _C*.so in {out}"


def _syntax_check(source: Path, includes: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    cmd = [shutil.which("g++") or "g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           *includes, str(source)]
    return source, subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_torch_launchers_compile_against_torch_headers(tmp_path):
    home = cuda_home()
    if shutil.which("g++") is None or home is None:
        pytest.skip(f"needs g++ and the CUDA toolkit headers; g++: {shutil.which('g++')}, CUDA home: {home}")
    cuda_include = home / "include"
    if not (TORCH_INCLUDE / "c10" / "cuda" / "CUDAGuard.h").exists():
        pytest.skip(f"torch {torch.__version__} ships no c10/cuda headers")
    system = [TORCH_INCLUDE, TORCH_INCLUDE / "torch" / "csrc" / "api" / "include", cuda_include,
              Path(sysconfig.get_paths()["include"])]
    generated = TORCH_INCLUDE / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not generated.exists():  # CPU wheels omit this generated one-liner of the CUDA build
        stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        system.append(tmp_path / "stub")
    includes = [f"-I{ROOT / 'csrc' / 'kernels'}"] + [arg for p in system for arg in ("-isystem", str(p))]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda src: _syntax_check(src, includes), LAUNCHERS))
    failed = {src.name: res.stderr[-3000:] for src, res in results if res.returncode != 0}
    assert not failed, failed
    assert {src.name for src in LAUNCHERS} >= {"bindings.cpp", "lane_decode.cpp"}
