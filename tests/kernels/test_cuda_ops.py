"""The CUDA backend (rpo_kernels.cuda, extension rpo_kernels._C): without the extension, the Python layer imports,
reports why it is absent and its fake partners trace under torch.export; with it on a GPU, parity against the
fp64 oracle (16-bit under the 2x rule of tests/helpers/rules.py) on irregular lane cases, the engine's auto choice,
torch.compile, and argument errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rpo_kernels
import rpo_kernels.cuda as cuda_ops
from tests.helpers.lane_oracle import lane_attention, lane_case
from tests.helpers.rules import assert_within_rule

ROOT = Path(__file__).resolve().parents[2]
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 4e-3}


def on_gpu(fn):
    """Needs a CUDA GPU and the built extension (skipped with the reason otherwise, see tests/conftest.py)."""
    return pytest.mark.gpu(pytest.mark.cuda_ext(fn))


# ---- no extension needed ---------------------------------------------------------------------------------------------
def test_import_needs_no_extension_and_says_why():
    code = ("import json, sys, rpo_kernels.cuda as c; assert 'rpo_kernels._C' not in sys.modules; "
            "print(json.dumps(c.available()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    ok, why = json.loads(res.stdout.strip().splitlines()[-1])
    assert isinstance(ok, bool) and why


def test_unsupported_decode_inputs_are_refused_before_loading():
    q = torch.zeros(2, 4, 64)
    assert cuda_ops.supports_lane_decode(q)[0] is False
    assert cuda_ops.supports_lane_decode(torch.zeros(2, 4, 96, dtype=torch.bfloat16))[0] is False
    assert cuda_ops.supports_lane_decode(q.bfloat16())[0] is True
    assert cuda_ops.supports_lane_decode(q.bfloat16(), q.bfloat16().requires_grad_())[0] is False
    case = lane_case([2], [5], [1, 2], 4, 2, 64, torch.float32)
    plan = rpo_kernels.plan_lane_decode(**case["args"], prefix_shape=case["prefix_shape"],
                                        suffix_shape=case["suffix_shape"])
    with pytest.raises(ValueError, match="backend 'cuda' cannot run this call: .*float16 or bfloat16"):
        rpo_kernels.lane_decode_attention(case["q"], case["pk"], case["pv"], case["sk"], case["sv"], plan,
                                          backend="cuda")


SCHEMAS_WITHOUT_EXTENSION = textwrap.dedent("""
    import re, torch
    from pathlib import Path
    src = Path("csrc/ops/bindings.cpp").read_text()
    block = src[src.index("TORCH_LIBRARY(rpo_kernels, m)"):src.index("TORCH_LIBRARY_IMPL")]
    lib = torch.library.Library("rpo_kernels", "DEF")
    for d in re.findall(r"m\\.def\\(((?:.|\\n)*?)\\);", block):
        lib.define("".join(re.findall(r'"((?:[^"\\\\]|\\\\.)*)"', d)))
    from rpo_kernels.cuda import ops
    ops.register_fakes()
    ops._loaded = True
""")


def run_without_extension(body: str) -> None:
    """Run ``body`` in a fresh process where the op schemas of csrc/ops/bindings.cpp are defined from Python (no
    extension) and rpo_kernels.cuda's fakes and autograd formulas are registered on them."""
    script = SCHEMAS_WITHOUT_EXTENSION + textwrap.dedent(body) + "\nprint('ok')\n"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-4000:]


def test_fake_partners_trace_under_export():
    """torch.export of a function calling the wrapper: the graph holds the op with the right metadata."""
    run_without_extension("""
        import rpo_kernels
        case = dict(prefix_lane=[0, 0, 1], prefix_length=[20, 20, 30], suffix_lane=[2, 0, 1], suffix_length=[3, 1, 2])
        plan = rpo_kernels.plan_lane_decode(**case, prefix_shape=(2, 32), suffix_shape=(3, 8))
        class M(torch.nn.Module):
            def forward(self, q, pk, pv, sk, sv):
                return ops.lane_decode_attention(q, pk, pv, sk, sv, plan, 0.125)
        bf = torch.bfloat16
        lanes = [torch.randn(*shape, dtype=bf) for shape in ((2, 2, 32, 64),) * 2 + ((3, 2, 8, 64),) * 2]
        ep = torch.export.export(M(), (torch.randn(3, 8, 64, dtype=bf), *lanes))
        targets = {str(n.target) for n in ep.graph.nodes}
        assert "rpo_kernels.lane_decode.default" in targets, targets
        out, lse = [node.meta["val"] for node in ep.graph.output_node().args[0]]
        assert out.shape == (3, 8, 64) and out.dtype == bf
        assert lse.shape == (3, 8) and lse.dtype == torch.float32
    """)


# ---- GPU + extension -------------------------------------------------------------------------------------------------
def check_lane_decode(case, dtype, backend="cuda"):
    """The CUDA kernel through the public op against the fp64 oracle under the 2x rule; returns (out, lse)."""
    plan = rpo_kernels.plan_lane_decode(**case["args"], prefix_shape=case["prefix_shape"],
                                        suffix_shape=case["suffix_shape"], device="cuda")
    out, lse = rpo_kernels.lane_decode_attention(case["q"], case["pk"], case["pv"], case["sk"], case["sv"], plan,
                                                 return_lse=True, backend=backend)
    scale = 1 / math.sqrt(case["q"].shape[-1])
    ref_o, ref_l = lane_attention(case, scale, torch.float64)
    low_o, _ = lane_attention(case, scale, dtype)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_within_rule(out, ref_o, low_o, atol=ATOL[dtype], name="out")
    assert_within_rule(lse, ref_l, ref_l.float(), atol=1e-4, name="lse")
    return out, lse


HEADS = [(8, 8), (8, 2), (4, 1)]
BG = [(1, 1), (3, 5), (7, 16)]
PREFIX_LENGTHS = [0, 1, 37, 1000]


@on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("b,g", BG)
@pytest.mark.parametrize("case", range(2))
def test_lane_decode_matches_oracle(case, b, g, hq, hkv, d, dtype):
    gen = torch.Generator().manual_seed(case)
    plens = [PREFIX_LENGTHS[(case + i) % len(PREFIX_LENGTHS)] for i in range(b)]
    groups = [g] * b if case == 0 else torch.randint(1, g + 1, (b,), generator=gen).tolist()
    check_lane_decode(lane_case(groups, plens, None, hq, hkv, d, dtype, seed=case, device="cuda"), dtype)


@on_gpu
def test_lane_decode_long_prefix_and_auto_choice():
    """P = 4096, G = 16: split-KV over the prefix; the auto choice on a GPU is the CUDA kernel (same bits)."""
    case = lane_case([16], [4096], [150] * 16, 32, 8, 128, torch.bfloat16, device="cuda")
    out, lse = check_lane_decode(case, torch.bfloat16)
    auto = check_lane_decode(case, torch.bfloat16, backend=None)
    assert torch.equal(out, auto[0]) and torch.equal(lse, auto[1])


@on_gpu
def test_lane_decode_under_torch_compile():
    case = lane_case([5, 3], [300, 37], None, 8, 2, 128, torch.bfloat16, device="cuda")
    plan = rpo_kernels.plan_lane_decode(**case["args"], prefix_shape=case["prefix_shape"],
                                        suffix_shape=case["suffix_shape"], device="cuda")
    args = (case["q"], case["pk"], case["pv"], case["sk"], case["sv"], plan, 0.1)
    cuda_ops.load()
    compiled = torch.compile(lambda *a: cuda_ops.lane_decode_attention(*a), fullgraph=True)
    out, lse = compiled(*args)
    eager_o, eager_l = cuda_ops.lane_decode_attention(*args)
    assert torch.equal(out, eager_o) and torch.equal(lse, eager_l)


@on_gpu
def test_launchers_name_the_argument():
    case = lane_case([2], [40], [3, 5], 4, 2, 64, torch.bfloat16, device="cuda")
    plan = rpo_kernels.plan_lane_decode(**case["args"], prefix_shape=case["prefix_shape"],
                                        suffix_shape=case["suffix_shape"], device="cuda")
    tables, groups, tokens = cuda_ops.ops.lane_tables(plan, torch.device("cuda"))
    q, pk, pv, sk, sv = (case[k].contiguous() for k in ("q", "pk", "pv", "sk", "sv"))
    op = torch.ops.rpo_kernels.lane_decode
    cuda_ops.load()
    with pytest.raises(RuntimeError, match="'q' must be a CUDA tensor"):
        op(q.cpu(), pk, pv, sk, sv, tables, groups, tokens, 0.125)
    with pytest.raises(RuntimeError, match="'q' must have head dim 64 or 128"):
        op(torch.zeros(2, 4, 96, dtype=torch.bfloat16, device="cuda"), pk, pv, sk, sv, tables, groups, tokens, 0.1)
    with pytest.raises(RuntimeError, match="'prefix_v' must have dtype"):
        op(q, pk, pv.half(), sk, sv, tables, groups, tokens, 0.1)
    with pytest.raises(RuntimeError, match="'tables' must have shape"):
        op(q, pk, pv, sk, sv, tables[:-1], groups, tokens, 0.1)
    sv_other = sv.transpose(1, 2).contiguous().transpose(1, 2)  # same shape and aligned rows, other strides
    with pytest.raises(RuntimeError, match="V lanes must have the shape and strides of 'suffix_k'"):
        op(q, pk, pv, sk, sv_other, tables, groups, tokens, 0.1)
