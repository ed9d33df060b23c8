"""The CUDA backend (rpo_kernels.cuda, extension rpo_kernels._C): without the extension, the Python layer imports,
reports why it is absent and its fake partners trace under torch.export; with it on a GPU, parity against the
reference backend (16-bit under the 2x rule of tests/helpers/rules.py) on the irregular cases of the shared-prefix
issue, torch.compile, and argument errors."""

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
from tests.helpers.decode_oracle import decode_attention, indptr
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
    assert cuda_ops.supports_shared_prefix_attention(q)[0] is False
    assert cuda_ops.supports_shared_prefix_attention(q.half(), q_indptr=torch.arange(3))[0] is False
    assert cuda_ops.supports_shared_prefix_attention(torch.zeros(2, 4, 96, dtype=torch.bfloat16))[0] is False
    assert cuda_ops.supports_shared_prefix_attention(q.bfloat16())[0] is True
    with pytest.raises(NotImplementedError, match="float16 or bfloat16"):
        cuda_ops.shared_prefix_attention(q, q, q, None, q, q, None, None)


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
    """torch.export of a function calling every wrapper: the graph holds the three ops with the right metadata."""
    run_without_extension("""
        class M(torch.nn.Module):
            def forward(self, q, pk, pv, pind, sk, sv, sind, gind, oa, la, kc, vc, slots):
                out, lse = ops.shared_prefix_attention(q, pk, pv, pind, sk, sv, sind, gind, return_lse=True)
                merged, mlse = ops.merge_attention_states(out, lse, oa, la)
                ops.kv_append(kc, vc, pk[:3], pv[:3], slots)
                return merged, mlse, kc + 0
        bf = torch.bfloat16
        args = (torch.randn(6, 8, 64, dtype=bf), torch.randn(50, 2, 64, dtype=bf), torch.randn(50, 2, 64, dtype=bf),
                torch.tensor([0, 20, 50]), torch.randn(12, 2, 64, dtype=bf), torch.randn(12, 2, 64, dtype=bf),
                torch.arange(0, 14, 2), torch.tensor([0, 2, 6]), torch.randn(6, 8, 64, dtype=bf), torch.randn(6, 8),
                torch.zeros(4, 4, 2, 64, dtype=bf), torch.zeros(4, 4, 2, 64, dtype=bf), torch.tensor([0, 5, 7]))
        ep = torch.export.export(M(), args)
        targets = {str(n.target) for n in ep.graph.nodes}
        for op in ("shared_prefix_decode", "merge_attention_states", "kv_append"):
            assert f"rpo_kernels.{op}.default" in targets, (op, targets)
        merged, mlse, _ = [node.meta["val"] for node in ep.graph.output_node().args[0]]
        assert merged.shape == (6, 8, 64) and merged.dtype == bf
        assert mlse.shape == (6, 8) and mlse.dtype == torch.float32
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
def make_decode(groups, plens, hq, hkv, d, dtype, slens=None, device="cuda"):
    gind, pind = indptr(groups), indptr(plens)
    n = gind[-1]
    slens = slens if slens is not None else torch.randint(1, 130, (n,)).tolist()
    sind = indptr(slens)
    q = torch.randn(hq, n, d, device=device).to(dtype).transpose(0, 1)  # non-contiguous
    prefix = torch.randn(pind[-1], 2, hkv, d, device=device).to(dtype)
    suffix = torch.randn(sind[-1], 2, hkv, d, device=device).to(dtype)
    index = [torch.tensor(x, dtype=torch.int32, device=device) for x in (pind, sind, gind)]
    return dict(q=q, prefix_k=prefix[:, 0], prefix_v=prefix[:, 1], prefix_indptr=index[0], suffix_k=suffix[:, 0],
                suffix_v=suffix[:, 1], suffix_indptr=index[1], group_indptr=index[2]), (pind, sind, gind)


def check_decode(args, host, dtype):
    shared_prefix_attention = rpo_kernels.shared_prefix_attention
    out, lse = cuda_ops.shared_prefix_attention(**args, return_lse=True)
    f32 = {k: (v.float() if v.is_floating_point() else v) for k, v in args.items()}
    ref_o, ref_l = shared_prefix_attention(**f32, return_lse=True, backend="reference")
    pind, sind, gind = host
    low_o, _ = decode_attention(args["q"], args["prefix_k"], args["prefix_v"], pind, args["suffix_k"],
                                args["suffix_v"], sind, gind, 1 / math.sqrt(args["q"].shape[-1]), dtype)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_within_rule(out, ref_o, low_o, atol=ATOL[dtype], name="out")
    assert_within_rule(lse, ref_l, ref_l, atol=1e-4, name="lse")


HEADS = [(8, 8), (8, 2), (4, 1)]
BG = [(1, 1), (3, 5), (7, 16)]
PREFIX_LENGTHS = [0, 1, 37, 1000]


@on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("b,g", BG)
@pytest.mark.parametrize("case", range(2))
def test_shared_prefix_decode_matches_reference(case, b, g, hq, hkv, d, dtype):
    torch.manual_seed(case)
    plens = [PREFIX_LENGTHS[(case + i) % len(PREFIX_LENGTHS)] for i in range(b)]
    groups = [g] * b if case == 0 else torch.randint(1, g + 1, (b,)).tolist()
    args, host = make_decode(groups, plens, hq, hkv, d, dtype)
    check_decode(args, host, dtype)


@on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_shared_prefix_decode_long_prefix(dtype):
    args, host = make_decode([16], [4096], 32, 8, 128, dtype, slens=[150] * 16)
    check_decode(args, host, dtype)


@on_gpu
def test_shared_prefix_decode_under_torch_compile():
    args, _ = make_decode([5, 3], [300, 37], 8, 2, 128, torch.bfloat16)
    cuda_ops.load()
    compiled = torch.compile(lambda **kw: cuda_ops.shared_prefix_attention(**kw, return_lse=True), fullgraph=True)
    out, lse = compiled(**args)
    eager_o, eager_l = cuda_ops.shared_prefix_attention(**args, return_lse=True)
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_append_matches_reference(dtype):
    kv_append = rpo_kernels.kv_append
    blocks, block_size, hkv, d = 6, 16, 2, 128
    k_cache = torch.randn(blocks * block_size, hkv, d, device="cuda").to(dtype)
    v_cache = torch.randn_like(k_cache)
    fused = torch.randn(37, 3, hkv, d, device="cuda").to(dtype)
    slots = torch.randperm(blocks * block_size, device="cuda")[:37]
    want_k, want_v = k_cache.clone(), v_cache.clone()
    kv_append(want_k, want_v, fused[:, 1], fused[:, 2], slots, backend="reference")
    cuda_ops.kv_append(k_cache.view(blocks, block_size, hkv, d), v_cache.view(blocks, block_size, hkv, d),
                       fused[:, 1], fused[:, 2], slots.int())
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


@on_gpu
def test_launchers_name_the_argument():
    args, _ = make_decode([2], [40], 4, 2, 64, torch.bfloat16)
    ops = torch.ops.rpo_kernels
    cuda_ops.load()
    with pytest.raises(RuntimeError, match="'q' must be a CUDA tensor"):
        ops.shared_prefix_decode(args["q"].cpu(), *list(args.values())[1:], 0.125)
    with pytest.raises(RuntimeError, match="'q' must have head dim 64 or 128"):
        ops.shared_prefix_decode(torch.zeros(2, 4, 96, dtype=torch.bfloat16, device="cuda"),
                                 *list(args.values())[1:], 0.125)
    with pytest.raises(RuntimeError, match="'prefix_v' must have dtype"):
        ops.shared_prefix_decode(args["q"], args["prefix_k"], args["prefix_v"].half(), *list(args.values())[3:], 0.1)
    with pytest.raises(RuntimeError, match="'suffix_indptr' must have shape"):
        ops.shared_prefix_decode(*list(args.values())[:6], args["suffix_indptr"][:-1], args["group_indptr"], 0.1)
    with pytest.raises(RuntimeError, match="'lse_b' must have dtype"):
        ops.merge_attention_states(args["q"], torch.zeros(2, 4, device="cuda"), args["q"],
                                   torch.zeros(2, 4, device="cuda", dtype=torch.float64))

