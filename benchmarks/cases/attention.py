"""Cases of the decode-attention benchmarks: one decode step with shared prefixes, B groups x G sequences, prefix P
tokens, suffix S tokens, Hq/Hkv = 32/8, D = 128 (bf16 on a GPU, fp32 on a CPU).

Providers:
  sdpa_dup            torch SDPA on the G-fold duplicated KV [prefix; suffix] per sequence (what a plain engine does)
  lane_reference      rpo_kernels.lane_decode_attention(backend="reference"): the planned decode over KV lanes
                      (each group's prefix in one lane, read once per group; each sequence's suffix in its own),
                      planned once per step
  lane_triton         the same with backend="triton" (a GPU, or the interpreter at tiny shapes)
  lane_cuda           the same with backend="cuda" (GPU, with the CUDA extension built)
  flash_attn          flash_attn_with_kvcache on the duplicated cache (GPU, when flash-attn is installed)
  flashinfer_cascade  flashinfer.MultiLevelCascadeAttentionWrapper, 2 levels (GPU, when flashinfer is installed)
"""

from __future__ import annotations

import importlib.util
import itertools

import torch
import torch.nn.functional as F

import rpo_kernels

from . import backend_reason, bench_dtype, dtype_name

HQ, HKV, D = 32, 8, 128
# Axes of the (P, G, S) grid: the scripts' default, their --quick one and a tiny one that the Triton interpreter runs.
GRID = dict(P=(512, 2048, 8192), G=(4, 8, 16), S=(64, 256))
QUICK = dict(P=(512, 2048), G=(4, 16), S=(64,))
TINY = dict(P=(64,), G=(2,), S=(16,))
# The GPU suite's grid (scripts/gpu_suite.sh): the pytest benchmarks' full size on a GPU.
GPU = dict(P=(1024, 4096, 16384), G=(8, 16), S=(64,))
GROUPS, TINY_GROUPS = 4, 2  # B: the scripts' default --groups, and the tiny grid's
PAGE = 16
PROVIDERS = ("sdpa_dup", "lane_reference", "lane_triton", "lane_cuda", "flash_attn", "flashinfer_cascade")
GPU_ONLY = ("lane_cuda", "flash_attn", "flashinfer_cascade")


def shapes(grid: dict) -> list[tuple[int, int, int]]:
    """The (P, G, S) of a grid, P slowest."""
    return list(itertools.product(grid["P"], grid["G"], grid["S"]))


def shape_name(b, g, p, s, dtype) -> str:
    return f"B{b} G{g} P{p} S{s} h{HQ}/{HKV} d{D} {dtype_name(dtype)}"


def grids(size: str, device: torch.device | str) -> list[tuple[dict, int]]:
    """(grid, B) pairs measured at ``size``: "smoke" the tiny grid, "quick" the tiny and the quick grids; "full" the
    scripts' grid on a CPU, the GPU suite's on a GPU."""
    if size in ("smoke", "quick"):
        return [(TINY, TINY_GROUPS)] + ([(QUICK, GROUPS)] if size == "quick" else [])
    return [(GPU if torch.device(device).type == "cuda" else GRID, GROUPS)]


def make_inputs(b: int, g: int, p: int, s: int, dtype: torch.dtype, device: str) -> dict:
    """The step's tensors in packed layout (q [N, Hq, D]; prefix_k/v [B*P, Hkv, D] and suffix_k/v [N*S, Hkv, D] with
    their indptrs), drawn on ``device``; each provider lays them out its own way."""
    gen = torch.Generator(device=device).manual_seed(0)  # drawn where it is used: GPU shapes are large
    n = b * g

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    def steps(size, count):
        return torch.arange(count + 1, dtype=torch.int32, device=device) * size

    return dict(q=rand(n, HQ, D), prefix_k=rand(b * p, HKV, D), prefix_v=rand(b * p, HKV, D),
                prefix_indptr=steps(p, b), suffix_k=rand(n * s, HKV, D), suffix_v=rand(n * s, HKV, D),
                suffix_indptr=steps(s, n), group_indptr=steps(g, b))


def duplicated(x: dict, b: int, g: int, p: int, s: int, heads_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V [N, P+S, Hkv, D] (or [N, Hkv, P+S, D]): every sequence holds its own copy of its group's prefix."""
    out = []
    for name in ("k", "v"):
        pre = x[f"prefix_{name}"].view(b, 1, p, HKV, D).expand(b, g, p, HKV, D)
        suf = x[f"suffix_{name}"].view(b, g, s, HKV, D)
        if heads_first:
            pre, suf = pre.transpose(2, 3), suf.transpose(2, 3)
        both = torch.cat([pre, suf], dim=3 if heads_first else 2)
        out.append(both.reshape((b * g, HKV, p + s, D) if heads_first else (b * g, p + s, HKV, D)))
    return out[0], out[1]


def provider_reason(name: str, device: torch.device | str, *, interpreted: bool = False) -> str | None:
    """None when provider ``name`` runs on ``device``, else why not (``interpreted``: as in ``backend_reason``)."""
    device = torch.device(device)
    if name in ("lane_triton", "lane_cuda"):
        return backend_reason(name.removeprefix("lane_"), device, interpreted=interpreted)
    module = {"flash_attn": "flash_attn", "flashinfer_cascade": "flashinfer"}.get(name)
    if module is None:
        return None
    if device.type != "cuda":
        return f"{name} needs a CUDA device; got {device}"
    return None if importlib.util.find_spec(module) else f"{module} is not installed"


def provider_names(device: str) -> list[str]:
    """The providers the table script measures on ``device`` (Triton on a GPU only)."""
    return [name for name in PROVIDERS if provider_reason(name, device) is None]


def _lanes(x: dict, b: int, g: int, p: int, s: int):
    """The KV in lanes ([B, Hkv, P, D] prefixes, [N, Hkv, S, D] suffixes) and the step's plan."""
    n = b * g
    lanes = [x[f"prefix_{k}"].view(b, p, HKV, D).transpose(1, 2).contiguous() for k in ("k", "v")]
    lanes += [x[f"suffix_{k}"].view(n, s, HKV, D).transpose(1, 2).contiguous() for k in ("k", "v")]
    plan = rpo_kernels.plan_lane_decode([i // g for i in range(n)], [p] * n, list(range(n)), [s] * n,
                                        prefix_shape=(b, p), suffix_shape=(n, s), device=x["q"].device)
    return lanes, plan


def build(name: str, x: dict, b: int, g: int, p: int, s: int):
    """(call, bytes of KV the provider's layout holds) for one shape."""
    n = b * g
    elem = x["q"].element_size()
    shared_bytes = (b * p + n * s) * HKV * D * 2 * elem
    if name in ("lane_reference", "lane_triton", "lane_cuda"):
        lanes, plan = _lanes(x, b, g, p, s)
        backend = name.removeprefix("lane_")
        return (lambda: rpo_kernels.lane_decode_attention(x["q"], *lanes, plan, backend=backend)), shared_bytes
    if name == "sdpa_dup":
        # the cache in SDPA's [N, Hkv, L, D] layout; the Hq/Hkv query heads of a KV head ride as its query rows
        k, v = duplicated(x, b, g, p, s, heads_first=True)
        q4 = x["q"].view(n, HKV, HQ // HKV, D)
        return (lambda: F.scaled_dot_product_attention(q4, k, v)), k.numel() * 2 * elem
    if name == "flash_attn":
        k, v = duplicated(x, b, g, p, s, heads_first=False)
        from flash_attn import flash_attn_with_kvcache

        lens = torch.full((n,), p + s, dtype=torch.int32, device=k.device)
        q4 = x["q"].view(n, 1, HQ, D)
        return (lambda: flash_attn_with_kvcache(q4, k, v, cache_seqlens=lens)), k.numel() * 2 * elem
    if name == "flashinfer_cascade":
        import flashinfer

        dev, i32 = x["q"].device, dict(dtype=torch.int32, device=x["q"].device)
        pre_pages, suf_pages = p // PAGE, s // PAGE
        cache = torch.empty(b * pre_pages + n * suf_pages, 2, PAGE, HKV, D, dtype=x["q"].dtype, device=dev)
        cache[:b * pre_pages, 0] = x["prefix_k"].view(-1, PAGE, HKV, D)
        cache[:b * pre_pages, 1] = x["prefix_v"].view(-1, PAGE, HKV, D)
        cache[b * pre_pages:, 0] = x["suffix_k"].view(-1, PAGE, HKV, D)
        cache[b * pre_pages:, 1] = x["suffix_v"].view(-1, PAGE, HKV, D)
        wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(
            2, torch.empty(128 * 2**20, dtype=torch.uint8, device=dev), "NHD")
        wrapper.plan([torch.arange(b + 1, **i32) * g, torch.arange(n + 1, **i32)],
                     [torch.arange(b + 1, **i32) * pre_pages, torch.arange(n + 1, **i32) * suf_pages],
                     [torch.arange(b * pre_pages, **i32), b * pre_pages + torch.arange(n * suf_pages, **i32)],
                     [torch.full((b,), PAGE, **i32), torch.full((n,), PAGE, **i32)],
                     HQ, HKV, D, PAGE, q_data_type=x["q"].dtype, kv_data_type=x["q"].dtype)
        return (lambda: wrapper.run(x["q"], cache)), shared_bytes
    raise ValueError(f"unknown provider {name!r}")


def decode_call(name: str, shape: tuple[int, int, int], b: int, device: str):
    """(call, shape label, bytes of KV the provider holds, bytes of KV a step must read) of provider ``name`` at
    (P, G, S) = ``shape`` with ``b`` groups: one decode step, without gradients."""
    dtype = bench_dtype(device)
    p, g, s = shape
    x = make_inputs(b, g, p, s, dtype, device)
    fn, held = build(name, x, b, g, p, s)

    def call():
        with torch.no_grad():
            fn()

    must_read = (b * p + b * g * s) * HKV * D * 2 * x["q"].element_size()
    return call, shape_name(b, g, p, s, dtype), held, must_read
