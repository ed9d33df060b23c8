"""``lane_decode_attention`` (planned decode over KV lanes) against the fp64 SDPA oracle."""

from __future__ import annotations

import pytest
import torch

from rpo_kernels import lane_decode_attention, plan_lane_decode
from rpo_kernels.reference.lane_decode_attention import _FUSED_CPU, lane_decode_attention_ref
from tests.helpers.attention_cases import lse_oracle, make_case, sdpa_oracle


def to_lanes(case: dict, *, seed: int = 0, spare_lanes: int = 3, spare_cap: int = 5, device: str = "cpu",
             shuffle: bool = True):
    """The KV of a decode case placed in shuffled lanes (holes between them, capacity beyond the longest entry,
    garbage in unused slots) and the plan's arguments: each group's prefix in one prefix lane, each sequence's
    suffix in its own suffix lane."""
    gen = torch.Generator().manual_seed(seed)
    group, prefix, suffix = (case[k].tolist() for k in ("group_indptr", "prefix_indptr", "suffix_indptr"))
    b, n = len(group) - 1, len(suffix) - 1
    hkv, d = case["prefix_k"].shape[1:]
    dtype = case["q"].dtype
    p_cap = max(prefix[i + 1] - prefix[i] for i in range(b)) + spare_cap
    s_cap = max(suffix[i + 1] - suffix[i] for i in range(n)) + spare_cap
    p_lanes = torch.randperm(b + spare_lanes, generator=gen)[:b].tolist() if shuffle else list(range(b))
    s_lanes = torch.randperm(n + spare_lanes, generator=gen)[:n].tolist() if shuffle else list(range(n))
    bufs = {k: torch.randn(b + spare_lanes, hkv, p_cap, d, generator=gen).to(dtype) for k in ("pk", "pv")}
    bufs.update({k: torch.randn(n + spare_lanes, hkv, s_cap, d, generator=gen).to(dtype) for k in ("sk", "sv")})
    args = dict(prefix_lane=[], prefix_length=[], suffix_lane=s_lanes, suffix_length=[])
    for g in range(b):
        lane, (p0, p1) = p_lanes[g], (prefix[g], prefix[g + 1])
        bufs["pk"][lane, :, :p1 - p0] = case["prefix_k"][p0:p1].transpose(0, 1)
        bufs["pv"][lane, :, :p1 - p0] = case["prefix_v"][p0:p1].transpose(0, 1)
        for i in range(group[g], group[g + 1]):
            s0, s1 = suffix[i], suffix[i + 1]
            bufs["sk"][s_lanes[i], :, :s1 - s0] = case["suffix_k"][s0:s1].transpose(0, 1)
            bufs["sv"][s_lanes[i], :, :s1 - s0] = case["suffix_v"][s0:s1].transpose(0, 1)
            args["prefix_lane"].append(lane)
            args["prefix_length"].append(p1 - p0)
            args["suffix_length"].append(s1 - s0)
    plan = plan_lane_decode(**args, prefix_shape=(b + spare_lanes, p_cap), suffix_shape=(n + spare_lanes, s_cap),
                            device=device)
    return bufs, plan


@pytest.mark.parametrize("glens,plens,slens,hq,hkv,d", [
    ([3, 1, 5], [17, 0, 40], None, 4, 2, 16),        # GQA, one group without a prefix
    ([1], [129], [1], 2, 2, 8),                       # first decode step after the prefill
    ([2, 2, 4, 1], [5, 63, 1, 30], None, 6, 1, 32),   # MQA, ragged
    ([8], [200], [0, 3, 1, 9, 2, 2, 1, 4], 8, 2, 64), # empty suffix under a prefix
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False], ids=["fused-cpu-kernel", "matmul"])
def test_matches_fp64_oracle(glens, plens, slens, hq, hkv, d, dtype, fused):
    if fused and _FUSED_CPU is None:
        pytest.skip("this torch build has no fused CPU attention kernel (aten::_scaled_dot_product_flash_attention_"
                    "for_cpu); the matmul form is tested instead")
    case = make_case(glens, plens, hq, hkv, d, slens=slens, dtype=dtype, seed=len(glens))
    bufs, plan = to_lanes(case, seed=hq)
    out, lse = lane_decode_attention_ref(case["q"], bufs["pk"], bufs["pv"], bufs["sk"], bufs["sv"], plan, 0.3,
                                         fused=fused)
    scaled = dict(case, q=case["q"] * (0.3 * d ** 0.5))  # the oracle uses 1/sqrt(D)
    exact = sdpa_oracle(scaled)
    plain = sdpa_oracle(scaled, dtype=dtype).double()  # torch SDPA at the same precision
    bound = 2 * (plain - exact).abs().max().item() + (1e-6 if dtype == torch.float32 else 1e-3)
    assert (out.double() - exact).abs().max().item() <= bound
    if dtype == torch.float32:
        torch.testing.assert_close(lse.double(), lse_oracle(case, 0.3), atol=1e-5, rtol=1e-5)


def test_queries_in_lane_order_skip_the_scatter():
    """Groups in lane order, all of one size, each sequence on the lane of its position: the plan leaves the row
    indices out (no scatter or gather of queries) and the result is the oracle's."""
    case = make_case([4, 4, 4], [9, 30, 2], 4, 2, 16, seed=5)
    bufs, plan = to_lanes(case, spare_lanes=0, shuffle=False)
    assert plan.prefix_rows is None and plan.suffix_rows is None
    out = lane_decode_attention(case["q"], bufs["pk"], bufs["pv"], bufs["sk"], bufs["sv"], plan)
    torch.testing.assert_close(out.double(), sdpa_oracle(case), atol=1e-5, rtol=1e-5)
    _, shuffled = to_lanes(case, seed=1)
    assert shuffled.prefix_rows is not None and shuffled.suffix_rows is not None


def test_plan_is_shared_by_layers_and_reads_in_place():
    case = make_case([2, 3], [9, 4], 4, 2, 8, seed=3)
    bufs, plan = to_lanes(case)
    first = lane_decode_attention(case["q"], bufs["pk"], bufs["pv"], bufs["sk"], bufs["sv"], plan)
    bufs["pk"][plan.prefix_lo] += 1.0  # another layer's KV in the same buffers: the same plan reads it in place
    second = lane_decode_attention(case["q"], bufs["pk"], bufs["pv"], bufs["sk"], bufs["sv"], plan)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prefix_lane=[0, 0], prefix_length=[3, 4], suffix_lane=[0, 1], suffix_length=[1, 1]), "prefix lane 0"),
    (dict(prefix_lane=[0, 1], prefix_length=[3, 4], suffix_lane=[1, 1], suffix_length=[1, 1]), "lane 1 is given"),
    (dict(prefix_lane=[0], prefix_length=[0], suffix_lane=[0], suffix_length=[0]), "attends to nothing"),
    (dict(prefix_lane=[5], prefix_length=[1], suffix_lane=[0], suffix_length=[1]), "prefix_lane"),
    (dict(prefix_lane=[0], prefix_length=[99], suffix_lane=[0], suffix_length=[1]), "prefix_length"),
    (dict(prefix_lane=[0], prefix_length=[1], suffix_lane=[0, 1], suffix_length=[1]), "suffix_lane"),
    (dict(prefix_lane=[], prefix_length=[], suffix_lane=[], suffix_length=[]), "empty"),
])
def test_plan_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_lane_decode(**kwargs, prefix_shape=(2, 8), suffix_shape=(2, 8))


def test_buffers_must_match_the_plan():
    plan = plan_lane_decode([0], [3], [1], [2], prefix_shape=(2, 8), suffix_shape=(3, 4))
    q = torch.randn(1, 4, 8)
    pk = torch.randn(2, 2, 8, 8)
    sk = torch.randn(3, 2, 4, 8)
    with pytest.raises(ValueError, match="suffix_v"):
        lane_decode_attention(q, pk, pk, sk, torch.randn(3, 2, 5, 8), plan)
    with pytest.raises(ValueError, match="rows"):
        lane_decode_attention(torch.randn(2, 4, 8), pk, pk, sk, sk, plan)
    with pytest.raises(TypeError, match="dtype"):
        lane_decode_attention(q, pk.double(), pk, sk, sk, plan)


@pytest.mark.parametrize("glens,plens,slens,hq,hkv,d", [
    ([3, 1, 2], [17, 0, 40], [5, 1, 9, 2, 3, 1], 4, 2, 16),
    ([2, 2], [70, 3], [0, 2, 1, 33], 2, 1, 32),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_reads_lanes_in_place(glens, plens, slens, hq, hkv, d, dtype):
    case = make_case(glens, plens, hq, hkv, d, slens=slens, dtype=dtype, seed=7)
    bufs, plan = to_lanes(case, seed=1)
    args = (case["q"], bufs["pk"], bufs["pv"], bufs["sk"], bufs["sv"], plan)
    out, lse = lane_decode_attention(*args, return_lse=True, backend="triton")
    exact = sdpa_oracle(case)
    plain = sdpa_oracle(case, dtype=dtype).double()
    bound = 2 * (plain - exact).abs().max().item() + (1e-5 if dtype == torch.float32 else 2e-3)
    assert (out.double() - exact).abs().max().item() <= bound
    _, ref_lse = lane_decode_attention(*args, return_lse=True, backend="reference")
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    tables = dict(plan.backend_cache)  # the grouping and the Triton tables, built once
    assert "groups" in tables and len(tables) == 2
    lane_decode_attention(*args, backend="triton")  # the next layer reuses them
    assert plan.backend_cache.keys() == tables.keys()
    assert all(plan.backend_cache[k] is v for k, v in tables.items())


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_triton_on_gpu_bf16(d):
    case = make_case([8, 8, 3], [1000, 37, 0], 12, 2, d, slens=[1] * 8 + [40] * 8 + [2, 7, 1], dtype=torch.bfloat16,
                     seed=2)
    bufs, plan = to_lanes(case, seed=3, device="cuda")
    case = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    bufs = {k: v.cuda() for k, v in bufs.items()}
    out = lane_decode_attention(case["q"], bufs["pk"], bufs["pv"], bufs["sk"], bufs["sv"], plan, backend="triton")
    exact = sdpa_oracle(case)
    plain = sdpa_oracle(case, dtype=torch.bfloat16).double()
    assert (out.double() - exact).abs().max().item() <= 2 * (plain - exact).abs().max().item() + 2e-3
