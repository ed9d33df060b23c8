"""Cases of the loss benchmarks: the fused clipped-ratio policy loss (forward + backward) and ``token_logprobs``
(forward, as when scoring old or reference log-probs), their shapes, inputs and providers.

Loss providers:
  naive      plain torch: full [N, V] logits, log_softmax, gather, then rpo_kernels' policy_loss
  reference  rpo_kernels.fused_linear_policy_loss(backend="reference") (chunked, the CPU path)
  triton     rpo_kernels.fused_linear_policy_loss(backend="triton") (a GPU, or the interpreter at tiny shapes)
  liger      liger_kernel's LigerFusedLinearGRPOLoss (when installed; pip install --no-deps liger-kernel), with its
             torch.compile'd chunk step on a GPU (its default), eager on a CPU
token_logprobs providers: naive (log_softmax of the full logits, gather), reference, triton.
"""

from __future__ import annotations

import importlib.util

import torch

import rpo_kernels
from rpo_kernels.reference import policy_loss_ref

from . import backend_reason, bench_dtype, dtype_name

# (N tokens, H hidden, V vocab): the scripts' defaults per device, their --quick shape, and a tiny one that the Triton
# interpreter runs in seconds.
SHAPES = {"cpu": (4096, 1024, 151936), "cuda": (8192, 2048, 151936), "quick": (512, 256, 32000),
          "tiny": (64, 32, 512)}
LOSS_PROVIDERS = ("naive", "reference", "triton", "liger")
LOGPROB_PROVIDERS = ("naive", "reference", "triton")


def shape_keys(size: str, device: torch.device | str) -> list[str]:
    """Keys of ``SHAPES`` measured at ``size``: "smoke" (tiny), "quick" (tiny and quick) or "full" (the device's)."""
    return {"smoke": ["tiny"], "quick": ["tiny", "quick"]}.get(size, [torch.device(device).type])


def make_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, seq_len: int = 512):
    """hidden [b, t, h], weight [v, h], targets, advantages, mask (about 75% active), old log-probs; drawn on
    ``device`` (the GPU shape's weight alone is 311M numbers)."""
    gen = torch.Generator(device=device).manual_seed(0)
    b = max(1, n // seq_len)
    t = n // b

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    hidden = (rand(b, t, h) * 0.5).to(dtype)
    weight = (rand(v, h) / h**0.5).to(dtype)
    targets = torch.randint(0, v, (b, t), generator=gen, device=device)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=gen, device=device)
    mask = torch.arange(t, device=device)[None] < lengths[:, None]
    mask[:, 0] = True
    advantages = rand(b)
    old = -torch.rand(b, t, generator=gen, device=device) * 5
    return hidden, weight, targets, advantages, mask, old


def naive_loss(hidden, weight, targets, advantages, mask, old):
    logits = (hidden @ weight.t()).float()
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    return policy_loss_ref(logp, old, advantages, mask, loss_type="dapo", eps_high=0.28)[0]


def provider_reason(name: str, device: torch.device | str, *, interpreted: bool = False) -> str | None:
    """None when provider ``name`` (of either op) runs on ``device``, else why not (``interpreted``: as in
    ``backend_reason``)."""
    if name == "triton":
        return backend_reason("triton", device, interpreted=interpreted)
    if name == "liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install --no-deps liger-kernel)"
    return None


def loss_providers(device: str) -> list[str]:
    """The loss providers the table script measures on ``device`` (Triton on a GPU only)."""
    return [name for name in LOSS_PROVIDERS if provider_reason(name, device) is None]


def loss_fn(name: str, device: str):
    """fn(hidden, weight, targets, advantages, mask, old) -> loss of provider ``name``."""
    if name == "naive":
        return naive_loss
    if name in ("reference", "triton"):
        return lambda *a: rpo_kernels.fused_linear_policy_loss(*a[:5], old_logprobs=a[5], eps_high=0.28,
                                                               backend=name)[0]
    if name == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        liger = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=torch.device(device).type == "cuda",
                                         epsilon_high=0.28, loss_type="dapo")
        return lambda h, w, t, a, m, o: liger(h, w, t, m.long(), a, old_per_token_logps=o)[0]
    raise ValueError(f"unknown loss provider {name!r}")


def label(shape_key: str, device: str) -> str:
    n, h, v = SHAPES[shape_key]
    return f"N={n} H={h} V={v} {dtype_name(bench_dtype(device))}"


def loss_step(name: str, shape_key: str, device: str):
    """(step, shape label): one forward + backward of provider ``name``'s loss, gradients of hidden and weight."""
    inputs = make_inputs(*SHAPES[shape_key], bench_dtype(device), device)
    fn = loss_fn(name, device)
    hidden = inputs[0].detach().requires_grad_()
    weight = inputs[1].detach().requires_grad_()

    def step():
        hidden.grad = weight.grad = None
        fn(hidden, weight, *inputs[2:]).backward()

    return step, label(shape_key, device)


def logprobs_call(name: str, shape_key: str, device: str):
    """(call, shape label): ``token_logprobs`` of provider ``name`` without gradients."""
    hidden, weight, targets = make_inputs(*SHAPES[shape_key], bench_dtype(device), device)[:3]
    if name == "naive":
        def fn():
            return torch.log_softmax((hidden @ weight.t()).float(), -1).gather(-1, targets[..., None])
    elif name in ("reference", "triton"):
        def fn():
            return rpo_kernels.token_logprobs(hidden, weight, targets, backend=name)
    else:
        raise ValueError(f"unknown token_logprobs provider {name!r}")

    def call():
        with torch.no_grad():
            fn()

    return call, label(shape_key, device)
