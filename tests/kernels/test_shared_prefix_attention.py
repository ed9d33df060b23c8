"""plan_shared_prefix + shared_prefix_attention (the extend op) against torch SDPA over each sequence's concatenated
[prefix; suffix] KV, every backend.

Irregular cases sample the grid B in {1, 3, 7}, G in {1, 5, 16}, prefix {0, 1, 37, 1000}, suffix ragged 1..129,
queries 1 (the last token) up to the whole suffix, Hq/Hkv in {8/8, 8/2, 4/1, 32/1}, D in {64, 80, 128},
non-contiguous inputs. The Triton kernels run through the interpreter on CPU (cost per program), so their cases are
the smaller ones, with at most 8 queries per sequence.
"""

from __future__ import annotations

import math

import pytest
import torch

import rpo_kernels
from rpo_kernels.triton.shared_prefix_attention import plan_segments, shared_prefix_forward
from tests.helpers.attention_cases import DIFF_NAMES, KV_NAMES, attend, lse_oracle, make_case, on, plan_of, sdpa_oracle
from tests.helpers.rules import assert_within_rule, max_abs_err

BOTH = ("reference", "triton")
# (glens, plens, Hq, Hkv, D, max_q, noncontig): cases both backends run (Triton: max_q <= 8)
SMALL = [
    ([16], [1000], 4, 1, 128, 1, False),
    ([1, 5, 16], [37, 0, 1], 8, 2, 64, None, True),
    ([5, 1, 5], [1, 37, 0], 8, 8, 64, None, False),
    ([5], [1000], 8, 2, 128, None, True),
    ([3], [37], 32, 1, 80, 1, False),  # 32 heads per KV head: several M tiles per query; D not a power of 2
]
# larger cases for the reference only (the interpreter pays per program)
LARGE = [
    ([1, 5, 16, 1, 5, 1, 16], [0, 1, 37, 1000, 37, 1, 0], 8, 2, 64, 1, False),
    ([5, 16, 1, 5, 1, 5, 1], [1000, 37, 1, 0, 1000, 1, 37], 4, 1, 128, None, True),
]
CASES = [(b, *c) for c in SMALL for b in BOTH] + [("reference", *c) for c in LARGE]
CASE_IDS = [f"{c[0]}-B{len(c[1])}-G{max(c[1])}-P{max(c[2])}-h{c[3]}/{c[4]}-d{c[5]}-q{c[6] or 'all'}"
            f"{'-noncontig' if c[7] else ''}" for c in CASES]
LOWP = [(torch.bfloat16, 2e-3), (torch.float16, 1e-3)]


@pytest.mark.parametrize("backend,glens,plens,hq,hkv,d,max_q,noncontig", CASES, ids=CASE_IDS)
def test_matches_sdpa_on_concatenated_kv(backend, glens, plens, hq, hkv, d, max_q, noncontig):
    max_q = min(max_q or 8, 8) if backend == "triton" else max_q
    case = make_case(glens, plens, hq, hkv, d, extend=True, max_q=max_q, noncontig=noncontig, seed=len(glens) + d)
    assert noncontig == (not case["q"].is_contiguous())
    out, lse = attend(case, backend, return_lse=True)
    want = sdpa_oracle(case)
    assert out.shape == want.shape and out.dtype == torch.float32 and lse.dtype == torch.float32
    assert max_abs_err(out, want) < 2e-5
    assert bool(torch.isfinite(lse).all())


@pytest.mark.parametrize("backend", BOTH)
def test_lse_and_softmax_scale(backend):
    case = make_case([3, 2], [37, 0], 4, 2, 64, extend=True, max_q=5, seed=1)
    out, lse = attend(case, backend, softmax_scale=0.3, return_lse=True)
    torch.testing.assert_close(lse.double(), lse_oracle(case, 0.3), atol=1e-5, rtol=1e-6)
    want = sdpa_oracle(dict(case, q=case["q"] * (0.3 * math.sqrt(64))))
    assert max_abs_err(out, want) < 2e-5


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("dtype,atol", LOWP)
@pytest.mark.parametrize("max_q", [1, 6])
def test_low_precision_within_rule(backend, dtype, atol, max_q):
    case = make_case([5, 1], [37, 1], 8, 2, 64, extend=True, max_q=max_q, dtype=dtype, seed=3)
    got = attend(case, backend)
    assert got.dtype == dtype
    assert_within_rule(got, sdpa_oracle(case), sdpa_oracle(case, dtype=dtype), atol=atol, name=f"{backend} out")


def _grads(fn, case, leaf_dtype, weights):
    leaves = {n: case[n].detach().to(leaf_dtype).requires_grad_() for n in DIFF_NAMES}
    out = fn(leaves)
    (out.double() * weights).sum().backward()
    return out.detach(), {n: leaves[n].grad for n in DIFF_NAMES}


@pytest.mark.parametrize("backend,glens,plens,hq,hkv,d,max_q", [
    ("reference", [5, 1, 16], [37, 0, 1000], 8, 2, 64, 40),
    ("triton", [3, 2], [37, 0], 4, 1, 64, 6),
    ("triton", [2], [70], 8, 8, 128, 5),
])
def test_gradients_match_sdpa_autograd(backend, glens, plens, hq, hkv, d, max_q):
    case = make_case(glens, plens, hq, hkv, d, extend=True, max_q=max_q, seed=5)
    weights = torch.randn(sdpa_oracle(case).shape, dtype=torch.float64)
    _, mine = _grads(lambda x: attend(case, backend, tensors=x), case, torch.float32, weights)
    _, want = _grads(lambda x: sdpa_oracle(case, tensors=x), case, torch.float64, weights)
    for name in DIFF_NAMES:
        assert mine[name].dtype == torch.float32
        assert max_abs_err(mine[name], want[name]) < 5e-5 * (1 + float(want[name].abs().max())), name


def test_triton_lse_gradient_matches_reference():
    case = make_case([2, 3], [1, 37], 4, 2, 64, extend=True, max_q=4, seed=7)
    grads = []
    for backend in BOTH:
        leaves = {n: case[n].detach().clone().requires_grad_() for n in DIFF_NAMES}
        out, lse = attend(case, backend, tensors=leaves, return_lse=True)
        (lse.sin().sum() + out.cos().sum()).backward()
        grads.append([leaves[n].grad for n in DIFF_NAMES])
    for name, a, b in zip(DIFF_NAMES, *grads):
        assert max_abs_err(a, b) < 5e-5, name


def test_triton_split_kv_matches_one_split():
    case = make_case([4, 1], [300, 130], 8, 2, 64, extend=True, max_q=3, seed=9)
    lay = plan_of(case).layout
    tables = plan_segments(lay.prefix_segments(), lay.suffix_segments(), 4, torch.device("cpu"), torch.float32,
                           decode=False)
    args = [case[n] for n in ("q",) + KV_NAMES]
    one, lse_one = shared_prefix_forward(*args, tables, 0.125, num_splits=1)
    three, lse_three = shared_prefix_forward(*args, tables, 0.125, num_splits=3)
    assert max_abs_err(one, three) < 1e-6 and max_abs_err(lse_one, lse_three) < 1e-5
    assert max_abs_err(three, sdpa_oracle(case)) < 2e-5


@pytest.mark.parametrize("backend", BOTH)
def test_empty_prefix_empty_suffix_and_empty_batch(backend):
    case = make_case([2, 2], [0, 5], 4, 2, 64, slens=[3, 1, 0, 0], extend=True, seed=11)  # group 1: no query
    assert max_abs_err(attend(case, backend), sdpa_oracle(case)) < 2e-5
    empty = make_case([], [], 4, 2, 64, slens=[], extend=True, seed=13)
    assert attend(empty, backend).shape == (0, 4, 64)


def test_plan_is_built_once_and_shared():
    """One plan serves every call (layer); the Triton tables are derived once per (GQA ratio, dtype) and cached."""
    case = make_case([3, 2], [37, 0], 4, 2, 64, extend=True, max_q=3, seed=4)
    plan = plan_of(case)
    first = attend(case, "triton", plan=plan)
    tables = dict(plan.backend_cache)
    second = attend(case, "triton", plan=plan, tensors=dict(prefix_k=case["prefix_k"] + 1.0))
    assert len(tables) == 1 and all(plan.backend_cache[k] is v for k, v in tables.items())  # not rebuilt
    assert not torch.allclose(first, second)  # another layer's KV, the same plan
    attend(case, "triton", plan=plan, tensors={n: case[n].half() for n in DIFF_NAMES})
    attend(case, "triton", plan=plan, tensors=dict(q=case["q"].repeat_interleave(2, dim=1)))
    assert len(plan.backend_cache) == 3  # fp16 and the GQA ratio 4 each get their own tables
    assert plan_of(case).layout == plan.layout and plan.layout.query == tuple(case["q_indptr"].tolist())


INDPTRS = dict(prefix_indptr=[0, 5, 8], suffix_indptr=[0, 2, 5, 6], group_indptr=[0, 2, 3], q_indptr=[0, 1, 3, 4])
BAD_PLANS = [
    ("prefix_indptr", ValueError, dict(prefix_indptr=[0, 6, 5])),
    ("prefix_indptr", ValueError, dict(prefix_indptr=[0, 8])),
    ("prefix_indptr", TypeError, dict(prefix_indptr=torch.tensor([0.0, 5.0, 8.0]))),
    ("prefix_indptr", TypeError, dict(prefix_indptr=[0, 5.0, 8])),
    ("prefix_indptr", ValueError, dict(prefix_indptr=torch.tensor([0, 5, 8], device="meta"))),
    ("suffix_indptr", ValueError, dict(suffix_indptr=[1, 3, 6, 6])),
    ("suffix_indptr", ValueError, dict(suffix_indptr=[])),
    ("group_indptr", ValueError, dict(group_indptr=[0, 3, 3])),
    ("group_indptr", ValueError, dict(group_indptr=[0, 2, 4])),
    ("q_indptr", ValueError, dict(q_indptr=[0, 3, 4, 5])),
    ("q_indptr", ValueError, dict(q_indptr=[0, 1, 2])),
    ("q_indptr", TypeError, dict(q_indptr=None)),  # no decode form: lane_decode_attention serves decode
]


@pytest.mark.parametrize("name,exc,changes", BAD_PLANS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_PLANS)])
def test_bad_plan_names_the_argument(name, exc, changes):
    with pytest.raises(exc, match=f"'{name}'"):
        rpo_kernels.plan_shared_prefix(**dict(INDPTRS, **changes))


def _tensors(**changes):
    x = dict(q=torch.randn(4, 4, 64), prefix_k=torch.randn(8, 2, 64), prefix_v=torch.randn(8, 2, 64),
             suffix_k=torch.randn(6, 2, 64), suffix_v=torch.randn(6, 2, 64))
    x.update(changes)
    return x


BAD_CALLS = [
    ("prefix_k", ValueError, dict(prefix_k=torch.randn(9, 2, 64))),
    ("q", ValueError, dict(q=torch.randn(4, 3, 64))),
    ("q", ValueError, dict(q=torch.randn(5, 4, 64))),
    ("q", ValueError, dict(q=torch.randn(4, 4, 64, device="meta"))),
    ("q", TypeError, dict(q=torch.randn(4, 4, 64).long())),
    ("suffix_k", ValueError, dict(suffix_k=torch.randn(6, 2, 32))),
    ("prefix_v", TypeError, dict(prefix_v=torch.randn(8, 2, 64, dtype=torch.float64))),
    ("suffix_v", ValueError, dict(suffix_v=torch.randn(6, 2, 64, device="meta"))),
    ("suffix_v", ValueError, dict(suffix_v=torch.randn(6, 1, 64))),
    ("plan", TypeError, dict(plan=INDPTRS)),
    ("softmax_scale", ValueError, dict(softmax_scale=-1.0)),
    ("backend", ValueError, dict(backend="cudnn")),
]


@pytest.mark.parametrize("name,exc,changes", BAD_CALLS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_CALLS)])
def test_bad_call_names_the_argument(name, exc, changes):
    kw = dict(plan=rpo_kernels.plan_shared_prefix(**INDPTRS), backend="reference")
    kw.update({k: changes.pop(k) for k in ("plan", "softmax_scale", "backend") if k in changes})
    x = _tensors(**changes)
    with pytest.raises(exc, match=f"'{name}'"):
        rpo_kernels.shared_prefix_attention(*(x[n] for n in DIFF_NAMES), **kw)


def test_auto_backend_on_cpu_is_the_reference():
    case = make_case([2], [9], 4, 4, 64, extend=True, seed=2)
    torch.testing.assert_close(attend(case, None), attend(case, "reference"))
    with pytest.raises(ValueError, match="not implemented"):  # the CUDA extension serves lane decode only
        attend(case, "cuda")


def test_reference_takes_queries_in_chunks(monkeypatch):
    import rpo_kernels.reference.shared_prefix_attention as ref

    case = make_case([3, 2], [37, 0], 8, 2, 64, extend=True, seed=3)
    monkeypatch.setattr(ref, "CHUNK_ELEMENTS", 4000)  # about 3 queries a chunk
    assert max_abs_err(attend(case, "reference"), sdpa_oracle(case)) < 2e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", LOWP)
def test_gpu_triton_forward_backward_within_rule(dtype, atol):
    case = make_case([16, 5, 1], [1000, 37, 0], 8, 2, 128, extend=True, max_q=40, dtype=dtype, seed=21)
    gpu = on("cuda", case)
    weights = torch.randn(sdpa_oracle(case).shape, dtype=torch.float64)
    out, mine = _grads(lambda x: attend(gpu, "triton", tensors=x), gpu, dtype, weights.cuda())
    ref_out, want = _grads(lambda x: sdpa_oracle(case, tensors=x), case, torch.float64, weights)
    low_out, low = _grads(lambda x: sdpa_oracle(case, dtype=dtype, tensors=x), case, dtype, weights)
    assert_within_rule(out.cpu(), ref_out, low_out, atol=atol, name="out")
    for name in DIFF_NAMES:
        assert_within_rule(mine[name].cpu(), want[name], low[name], atol=atol * 10, name=f"grad {name}")


@pytest.mark.gpu
def test_gpu_last_token_queries_with_auto_split_kv():
    case = make_case([16] * 4, [4096, 1, 2000, 37], 32, 8, 128, extend=True, max_q=1, dtype=torch.bfloat16, seed=22)
    got = attend(on("cuda", case), "triton").cpu()
    assert_within_rule(got, sdpa_oracle(case), sdpa_oracle(case, dtype=torch.bfloat16), atol=2e-3)


@pytest.mark.gpu
def test_gpu_planned_calls_do_not_synchronise():
    """Given a plan, forward + backward on the GPU never makes the host wait (first use builds the tables too)."""
    case = on("cuda", make_case([5, 3], [300, 0], 8, 2, 64, extend=True, max_q=20, dtype=torch.bfloat16, seed=23))
    plan = plan_of(case, "cuda")
    leaves = {n: case[n].clone().requires_grad_() for n in DIFF_NAMES}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            attend(case, "triton", plan=plan, tensors=leaves).float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
