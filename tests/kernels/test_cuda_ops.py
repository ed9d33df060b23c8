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
    """torch.export of a function calling every wrapper: the graph holds both ops with the right metadata."""
    run_without_extension("""
        import rpo_kernels
        case = dict(prefix_lane=[0, 0, 1], prefix_length=[20, 20, 30], suffix_lane=[2, 0, 1], suffix_length=[3, 1, 2])
        plan = rpo_kernels.plan_lane_decode(**case, prefix_shape=(2, 32), suffix_shape=(3, 8))
        class M(torch.nn.Module):
            def forward(self, q, pk, pv, sk, sv, oa, la):
                out, lse = ops.lane_decode_attention(q, pk, pv, sk, sv, plan, 0.125)
                return ops.merge_attention_states(out, lse, oa, la)
        bf = torch.bfloat16
        lanes = [torch.randn(*shape, dtype=bf) for shape in ((2, 2, 32, 64),) * 2 + ((3, 2, 8, 64),) * 2]
        args = (torch.randn(3, 8, 64, dtype=bf), *lanes, torch.randn(3, 8, 64, dtype=bf), torch.randn(3, 8))
        ep = torch.export.export(M(), args)
        targets = {str(n.target) for n in ep.graph.nodes}
        for op in ("lane_decode", "merge_attention_states"):
            assert f"rpo_kernels.{op}.default" in targets, (op, targets)
        merged, mlse = [node.meta["val"] for node in ep.graph.output_node().args[0]]
        assert merged.shape == (3, 8, 64) and merged.dtype == bf
        assert mlse.shape == (3, 8) and mlse.dtype == torch.float32
    """)


def test_merge_backward_formula():
    """The autograd formula registered for rpo_kernels::merge_attention_states, on a float64 CPU stand-in of the
    kernel: gradcheck, and no gradient into an empty side (lse = -inf)."""
    run_without_extension("""
        @torch.library.impl("rpo_kernels::merge_attention_states", "cpu", lib=lib)
        def merge_cpu(oa, la, ob, lb):
            lse = torch.logaddexp(la, lb)
            return torch.exp(la - lse)[..., None] * oa + torch.exp(lb - lse)[..., None] * ob, lse
        op = torch.ops.rpo_kernels.merge_attention_states
        args = [torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True) if i % 2 == 0 else
                (torch.randn(5, 3, dtype=torch.float64) * 2).requires_grad_() for i in range(4)]
        assert torch.autograd.gradcheck(op, args)
        la = torch.full((5, 3), float("-inf"), dtype=torch.float64, requires_grad=True)
        oa = args[0].detach().clone().requires_grad_()
        out, lse = op(oa, la, args[2], args[3])
        (out.sum() + lse.sum()).backward()
        assert torch.equal(oa.grad, torch.zeros_like(oa)) and torch.equal(la.grad, torch.zeros_like(la))
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,h,d", [(19, 3, 40), (5, 2, 3), (989, 8, 128)])
def test_merge_attention_states_matches_reference(n, h, d, dtype):
    merge = rpo_kernels.merge_attention_states
    oa, ob = (torch.randn(n, h, d, device="cuda").to(dtype) for _ in range(2))
    la, lb = (torch.randn(n, h, device="cuda") * 3 for _ in range(2))
    la[0, 0] = lb[-1, -1] = -math.inf
    out, lse = cuda_ops.merge_attention_states(oa, la, ob, lb)
    ref_o, ref_l = merge(oa.float(), la, ob.float(), lb, backend="reference")
    low_o, _ = merge(oa, la, ob, lb, backend="reference")
    assert_within_rule(out, ref_o, low_o, atol=ATOL[dtype], name="out")
    assert_within_rule(lse, ref_l, ref_l, atol=1e-5, name="lse")


@on_gpu
def test_merge_gradients_match_reference():
    merge = rpo_kernels.merge_attention_states
    leaves = [torch.randn(37, 4, 64, device="cuda"), torch.randn(37, 4, device="cuda"),
              torch.randn(37, 4, 64, device="cuda"), torch.randn(37, 4, device="cuda")]
    g_out, g_lse = torch.randn(37, 4, 64, device="cuda"), torch.randn(37, 4, device="cuda")

    def grads(fn):
        xs = [x.clone().requires_grad_() for x in leaves]
        out, lse = fn(*xs)
        ((out * g_out).sum() + (lse * g_lse).sum()).backward()
        return [x.grad for x in xs]

    for mine, ref in zip(grads(cuda_ops.merge_attention_states), grads(lambda *a: merge(*a, backend="reference"))):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


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
    with pytest.raises(RuntimeError, match="V lanes must have the shape and strides of 'suffix_k'"):
        op(q, pk, pv, sk, case["sv"], tables, groups, tokens, 0.1)
    with pytest.raises(RuntimeError, match="'lse_b' must have dtype"):
        torch.ops.rpo_kernels.merge_attention_states(q, torch.zeros(2, 4, device="cuda"), q,
                                                     torch.zeros(2, 4, device="cuda", dtype=torch.float64))
