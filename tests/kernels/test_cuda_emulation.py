"""The CUDA kernels of csrc/kernels, executed on the CPU through the emulation of tests/helpers/cuda_emu, against
float64 oracles: the same kernel and host-launch source that nvcc compiles, compiled by g++ with every CUDA thread of a
block run as a host thread and wmma replaced by its reference model. It checks the indexing, tiling, masking, online
softmax, split-KV and merge logic without a GPU; it says nothing about speed or hardware memory ordering."""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from rpo_kernels import plan_lane_decode
from rpo_kernels.cuda.ops import lane_tables
from tests.helpers.cuda_toolchain import cuda_home
from tests.helpers.lane_oracle import lane_attention, lane_case
from tests.helpers.rules import assert_within_rule

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "tests" / "helpers" / "cuda_emu"
KERNELS = ROOT / "csrc" / "kernels"
CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Absolute tolerances on top of 2x plain torch's own error at the storage precision.
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 4e-3}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    home, gxx = cuda_home(), shutil.which("g++")
    if home is None or gxx is None:
        pytest.skip(f"the emulation needs g++ and the CUDA toolkit headers; g++: {gxx}, CUDA home: {home}")
    out = tmp_path_factory.mktemp("cuda_emu") / "librpo_emu.so"
    libdir = next((home / d for d in ("lib64", "lib") if (home / d).exists()), home / "lib64")
    cmd = [gxx, "-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", "-Wall", "-Werror", "-Wno-unknown-pragmas",
           "-include", str(EMU / "emu.h"), f"-I{EMU}", f"-I{KERNELS}", f"-I{home / 'include'}", "-x", "c++",
           *(str(KERNELS / f) for f in ("lane_decode.cu",)),
           "-x", "none", str(EMU / "harness.cpp"), f"-L{libdir}", "-lcudart", f"-Wl,-rpath,{libdir}", "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    handle = ctypes.CDLL(str(out))
    handle.emu_workspace_floats.restype = ctypes.c_int64
    return handle


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


# ---- lane decode -----------------------------------------------------------------------------------------------------
def run_lane_decode(lib, case, scale, max_splits):
    """The CUDA kernel on ``case`` (tests/helpers/lane_oracle.lane_case), with the tables the Python layer builds."""
    q = case["q"]
    n, hq, d = q.shape
    plan = plan_lane_decode(**case["args"], prefix_shape=case["prefix_shape"], suffix_shape=case["suffix_shape"])
    tables, groups, _ = lane_tables(plan, q.device)
    out, lse = torch.empty(n, hq, d, dtype=q.dtype), torch.empty(n, hq)
    workspace = torch.empty(lib.emu_workspace_floats(n, hq, d, max_splits))
    pk, sk = case["pk"], case["sk"]
    assert pk.stride() == case["pv"].stride() and sk.stride() == case["sv"].stride()
    strides = torch.tensor([*q.stride()[:2], *pk.stride()[:3], *sk.stride()[:3]], dtype=torch.int64)
    sizes = torch.tensor([groups, n, hq, pk.shape[1], d, max_splits], dtype=torch.int32)
    rc = lib.emu_lane_decode(_p(q), _p(pk), _p(case["pv"]), _p(sk), _p(case["sv"]), _p(strides), _p(tables),
                             _p(out), _p(lse), _p(workspace), _p(sizes), ctypes.c_float(scale), CODES[q.dtype])
    assert rc == 0
    return out, lse


# (queries per group, prefix lengths, suffix lengths or None for ragged 1..129, Hq, Hkv, D, max_splits or None =
# heuristic). Queries arrive shuffled across groups; lanes are shuffled with spare ones and garbage past each length.
CASES = [
    ([1], [1], [1], 8, 8, 64, None),
    ([5, 1, 16], [37, 0, 100], None, 8, 2, 128, None),
    ([16], [1000], [3] * 16, 8, 1, 128, 5),          # M = 128 query rows: two row blocks per CTA; 5 prefix chunks
    ([3, 9], [1000, 33], None, 8, 8, 64, 32),        # more chunks than the short prefix has tiles: empty chunks
    ([5], [37], [0, 1, 2, 0, 129], 4, 1, 64, 3),     # empty suffixes
    ([2, 1, 1, 3, 1, 2, 1], [1, 0, 37, 64, 65, 5, 2], None, 4, 1, 128, 2),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("groups,plens,slens,hq,hkv,d,splits", CASES)
def test_lane_decode(lib, dtype, groups, plens, slens, hq, hkv, d, splits):
    case = lane_case(groups, plens, slens, hq, hkv, d, dtype, seed=len(groups) + d)
    scale = 1 / math.sqrt(d)
    if splits is None:
        splits = lib.emu_num_splits(len(groups), hkv, ctypes.c_int64(sum(plens)), 132)
    out, lse = run_lane_decode(lib, case, scale, splits)
    ref_o, ref_l = lane_attention(case, scale, torch.float64)
    low_o, _ = lane_attention(case, scale, dtype)
    assert_within_rule(out, ref_o, low_o, atol=ATOL[dtype], name="out")
    assert_within_rule(lse, ref_l, ref_l.float(), atol=1e-5, name="lse")


def test_num_splits_heuristic(lib):
    assert lib.emu_num_splits(64, 8, ctypes.c_int64(64 * 4096), 132) == 1       # groups x heads fill the GPU
    assert lib.emu_num_splits(1, 8, ctypes.c_int64(4096), 132) == 16            # never below 256 tokens a chunk
    assert lib.emu_num_splits(1, 1, ctypes.c_int64(1 << 20), 132) == 32         # capped
    assert lib.emu_num_splits(4, 8, ctypes.c_int64(0), 132) == 1
