"""shared_prefix_attention against torch SDPA over each sequence's concatenated [prefix; suffix] KV, every backend.

Irregular cases sample the grid B in {1, 3, 7}, G in {1, 5, 16}, prefix {0, 1, 37, 1000}, suffix ragged 1..129,
Hq/Hkv in {8/8, 8/2, 4/1}, D in {64, 128}, decode and extend (causal) queries, non-contiguous inputs. The Triton
kernels run through the interpreter on CPU (cost per program), so their cases are the smaller ones.
"""

from __future__ import annotations

import math

import pytest
import torch

import rpo_kernels
from rpo_kernels.reference.shared_prefix_attention import RaggedLayout
from rpo_kernels.triton.shared_prefix_attention import make_plan, shared_prefix_forward
from tests.helpers.attention_cases import DIFF_NAMES, KV_NAMES, make_case, sdpa_oracle
from tests.helpers.rules import assert_within_rule, max_abs_err

BOTH = ("reference", "triton")
# (glens, plens, Hq, Hkv, D, extend, noncontig): cases both backends run
SMALL = [
    ([16], [1000], 4, 1, 128, False, False),
    ([1, 5, 16], [37, 0, 1], 8, 2, 64, False, True),
    ([5, 1, 5], [1, 37, 0], 8, 8, 64, True, False),
    ([5], [1000], 8, 2, 128, True, True),
    ([3], [37], 32, 1, 80, False, False),  # 32 heads per KV head: several decode tiles; D not a power of 2
]
# larger cases for the reference only (the interpreter pays per program)
LARGE = [
    ([1, 5, 16, 1, 5, 1, 16], [0, 1, 37, 1000, 37, 1, 0], 8, 2, 64, False, False),
    ([5, 16, 1, 5, 1, 5, 1], [1000, 37, 1, 0, 1000, 1, 37], 4, 1, 128, True, True),
]
CASES = [(b, *c) for c in SMALL for b in BOTH] + [("reference", *c) for c in LARGE]
CASE_IDS = [f"{c[0]}-B{len(c[1])}-G{max(c[1])}-P{max(c[2])}-h{c[3]}/{c[4]}-d{c[5]}-{'extend' if c[6] else 'decode'}"
            f"{'-noncontig' if c[7] else ''}" for c in CASES]
LOWP = [(torch.bfloat16, 2e-3), (torch.float16, 1e-3)]


def _call(case, backend, **kw):
    return rpo_kernels.shared_prefix_attention(**case, backend=backend, **kw)


@pytest.mark.parametrize("backend,glens,plens,hq,hkv,d,extend,noncontig", CASES, ids=CASE_IDS)
def test_matches_sdpa_on_concatenated_kv(backend, glens, plens, hq, hkv, d, extend, noncontig):
    case = make_case(glens, plens, hq, hkv, d, extend=extend, max_q=8 if backend == "triton" else None,
                     noncontig=noncontig, seed=len(glens) + d)
    assert noncontig == (not case["q"].is_contiguous())
    out, lse = _call(case, backend, return_lse=True)
    want = sdpa_oracle(case)
    assert out.shape == want.shape and out.dtype == torch.float32 and lse.dtype == torch.float32
    assert max_abs_err(out, want) < 2e-5
    assert bool(torch.isfinite(lse).all())


@pytest.mark.parametrize("backend", BOTH)
def test_lse_and_softmax_scale(backend):
    case = make_case([3, 2], [37, 0], 4, 2, 64, seed=1)
    out, lse = _call(case, backend, softmax_scale=0.3, return_lse=True)
    lay = RaggedLayout.from_tensors(case["prefix_indptr"], case["suffix_indptr"], case["group_indptr"])
    for i, (q0, _, kv0, kv_len, _) in enumerate(lay.suffix_segments()):
        b = next(g for g in range(lay.num_groups) if lay.group[g] <= i < lay.group[g + 1])
        keys = torch.cat([case["prefix_k"][lay.prefix[b]:lay.prefix[b + 1]], case["suffix_k"][kv0:kv0 + kv_len]])
        keys = keys.double().repeat_interleave(2, dim=1)  # [L, Hq, D]
        scores = 0.3 * torch.einsum("hd,lhd->hl", case["q"][q0].double(), keys)
        torch.testing.assert_close(lse[q0].double(), torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-6)
    want = sdpa_oracle(dict(case, q=case["q"] * (0.3 * math.sqrt(64))))
    assert max_abs_err(out, want) < 2e-5


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("dtype,atol", LOWP)
@pytest.mark.parametrize("extend", [False, True])
def test_low_precision_within_rule(backend, dtype, atol, extend):
    case = make_case([5, 1], [37, 1], 8, 2, 64, extend=extend, max_q=6, dtype=dtype, seed=3)
    got = _call(case, backend)
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
def test_extend_gradients_match_sdpa_autograd(backend, glens, plens, hq, hkv, d, max_q):
    case = make_case(glens, plens, hq, hkv, d, extend=True, max_q=max_q, seed=5)
    weights = torch.randn(sdpa_oracle(case).shape, dtype=torch.float64)
    _, mine = _grads(lambda x: _call(dict(case, **x), backend), case, torch.float32, weights)
    _, want = _grads(lambda x: sdpa_oracle(case, tensors=x), case, torch.float64, weights)
    for name in DIFF_NAMES:
        assert mine[name].dtype == torch.float32
        assert max_abs_err(mine[name], want[name]) < 5e-5 * (1 + float(want[name].abs().max())), name


def test_triton_lse_gradient_matches_reference():
    case = make_case([2, 3], [1, 37], 4, 2, 64, extend=True, max_q=4, seed=7)
    grads = []
    for backend in BOTH:
        leaves = {n: case[n].detach().clone().requires_grad_() for n in DIFF_NAMES}
        out, lse = _call(dict(case, **leaves), backend, return_lse=True)
        (lse.sin().sum() + out.cos().sum()).backward()
        grads.append([leaves[n].grad for n in DIFF_NAMES])
    for name, a, b in zip(DIFF_NAMES, *grads):
        assert max_abs_err(a, b) < 5e-5, name


def test_triton_split_kv_matches_one_split():
    case = make_case([4, 1], [300, 130], 8, 2, 64, seed=9)
    lay = RaggedLayout.from_tensors(case["prefix_indptr"], case["suffix_indptr"], case["group_indptr"])
    plan = make_plan(lay, 4, torch.device("cpu"), torch.float32)
    args = [case[n] for n in ("q",) + KV_NAMES]
    one, lse_one = shared_prefix_forward(*args, plan, 0.125, num_splits=1)
    three, lse_three = shared_prefix_forward(*args, plan, 0.125, num_splits=3)
    assert max_abs_err(one, three) < 1e-6 and max_abs_err(lse_one, lse_three) < 1e-5
    assert max_abs_err(three, sdpa_oracle(case)) < 2e-5


@pytest.mark.parametrize("backend", BOTH)
def test_empty_prefix_empty_suffix_and_empty_batch(backend):
    case = make_case([2, 2], [0, 5], 4, 2, 64, slens=[3, 1, 0, 0], seed=11)  # group 1: suffixes empty
    assert max_abs_err(_call(case, backend), sdpa_oracle(case)) < 2e-5
    extend = make_case([2], [0], 4, 2, 64, slens=[4, 0], extend=True, seed=12)  # sequence 1: no query
    assert max_abs_err(_call(extend, backend), sdpa_oracle(extend)) < 2e-5
    empty = make_case([], [], 4, 2, 64, slens=[], seed=13)
    assert _call(empty, backend).shape == (0, 4, 64)


def _bad(**changes):
    case = make_case([2, 1], [5, 3], 4, 2, 64, slens=[2, 3, 1], extend=False, seed=0)
    case.update(changes)
    return case


BAD = [
    ("prefix_indptr", ValueError, dict(prefix_indptr=torch.tensor([0, 6, 5]))),
    ("prefix_indptr", ValueError, dict(prefix_indptr=torch.tensor([0, 5, 9]))),
    ("prefix_indptr", ValueError, dict(prefix_indptr=torch.tensor([0, 8]))),
    ("prefix_indptr", TypeError, dict(prefix_indptr=torch.tensor([0.0, 5.0, 8.0]))),
    ("suffix_indptr", ValueError, dict(suffix_indptr=torch.tensor([1, 3, 6, 6]))),
    ("suffix_indptr", ValueError, dict(suffix_indptr=torch.tensor([0, 2, 5, 7]))),
    ("group_indptr", ValueError, dict(group_indptr=torch.tensor([0, 3, 3]))),
    ("group_indptr", ValueError, dict(group_indptr=torch.tensor([0, 2, 4]))),
    ("q", ValueError, dict(q=torch.randn(3, 3, 64))),
    ("q", ValueError, dict(q=torch.randn(4, 4, 64))),
    ("suffix_k", ValueError, dict(suffix_k=torch.randn(6, 2, 32))),
    ("prefix_v", TypeError, dict(prefix_v=torch.randn(8, 2, 64, dtype=torch.float64))),
    ("suffix_v", ValueError, dict(suffix_v=torch.randn(6, 2, 64, device="meta"))),
    ("suffix_v", ValueError, dict(suffix_v=torch.randn(6, 1, 64))),
    ("q_indptr", ValueError, dict(q_indptr=torch.tensor([0, 3, 4, 5]))),
    ("q_indptr", ValueError, dict(q_indptr=torch.tensor([0, 1, 2]))),
    ("suffix_indptr", ValueError, dict(prefix_indptr=torch.tensor([0, 8, 8]), prefix_k=torch.randn(8, 2, 64),
                                       suffix_indptr=torch.tensor([0, 3, 6, 6]))),
    ("softmax_scale", ValueError, dict(softmax_scale=-1.0)),
    ("backend", ValueError, dict(backend="cudnn")),
]


@pytest.mark.parametrize("name,exc,changes", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(name, exc, changes):
    backend = changes.pop("backend", "reference")
    scale = changes.pop("softmax_scale", None)
    with pytest.raises(exc, match=f"'{name}'"):
        rpo_kernels.shared_prefix_attention(**_bad(**changes), softmax_scale=scale, backend=backend)


def test_auto_backend_on_cpu_is_the_reference():
    case = make_case([2], [9], 4, 4, 64, seed=2)
    torch.testing.assert_close(_call(case, None), _call(case, "reference"))


def test_reference_takes_queries_in_chunks(monkeypatch):
    import rpo_kernels.reference.shared_prefix_attention as ref

    case = make_case([3, 2], [37, 0], 8, 2, 64, extend=True, seed=3)
    monkeypatch.setattr(ref, "CHUNK_ELEMENTS", 4000)  # about 3 queries a chunk
    assert max_abs_err(_call(case, "reference"), sdpa_oracle(case)) < 2e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", LOWP)
def test_gpu_triton_forward_backward_within_rule(dtype, atol):
    case = make_case([16, 5, 1], [1000, 37, 0], 8, 2, 128, extend=True, max_q=40, dtype=dtype, seed=21)
    gpu = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    weights = torch.randn(sdpa_oracle(case).shape, dtype=torch.float64)
    out, mine = _grads(lambda x: _call(dict(gpu, **x), "triton"), gpu, dtype, weights.cuda())
    ref_out, want = _grads(lambda x: sdpa_oracle(case, tensors=x), case, torch.float64, weights)
    low_out, low = _grads(lambda x: sdpa_oracle(case, dtype=dtype, tensors=x), case, dtype, weights)
    assert_within_rule(out.cpu(), ref_out, low_out, atol=atol, name="out")
    for name in DIFF_NAMES:
        assert_within_rule(mine[name].cpu(), want[name], low[name], atol=atol * 10, name=f"grad {name}")


@pytest.mark.gpu
def test_gpu_decode_with_auto_split_kv():
    case = make_case([16] * 4, [4096, 1, 2000, 37], 32, 8, 128, dtype=torch.bfloat16, seed=22)
    gpu = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    got = _call(gpu, "triton").cpu()
    assert_within_rule(got, sdpa_oracle(case), sdpa_oracle(case, dtype=torch.bfloat16), atol=2e-3)
