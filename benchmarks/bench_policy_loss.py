"""Benchmark of the fused clipped-ratio policy loss: forward + backward time and peak memory per provider.

Providers, side by side in one run on one device (on a CPU each in its own process):
  naive      plain torch: full [N, V] logits, log_softmax, gather, then rpo_kernels' policy_loss
  reference  rpo_kernels.fused_linear_policy_loss(backend="reference") (chunked, the CPU path)
  triton     rpo_kernels.fused_linear_policy_loss(backend="triton") (GPU only)
  liger      liger_kernel's LigerFusedLinearGRPOLoss (when installed; pip install --no-deps liger-kernel), with its
             torch.compile'd chunk step on a GPU (its default), eager on a CPU

``python -m benchmarks.bench_policy_loss`` runs (N, H, V) = (4096, 1024, 151936) fp32 on a CPU and
(8192, 2048, 151936) bf16 on a GPU; ``--quick`` a small shape (the quickstart demo). Rows go to
benchmarks/results/policy_loss.csv, the plot beside it, and a table with the ratios to naive is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

import rpo_kernels
from rpo_kernels.reference import policy_loss_ref
from rpo_train.errors import ArgumentParser, report_usage_errors

from .harness import RESULTS_DIR, device_name, emit_rows, finish, measure, rows_for, run_jobs

SHAPES = {"cpu": (4096, 1024, 151936), "cuda": (8192, 2048, 151936), "quick": (512, 256, 32000)}


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


def providers(device: str) -> dict:
    found = {
        "naive": naive_loss,
        "reference": lambda *a: rpo_kernels.fused_linear_policy_loss(*a[:5], old_logprobs=a[5], eps_high=0.28,
                                                                     backend="reference")[0],
    }
    if device == "cuda":
        found["triton"] = lambda *a: rpo_kernels.fused_linear_policy_loss(*a[:5], old_logprobs=a[5], eps_high=0.28,
                                                                          backend="triton")[0]
    if importlib.util.find_spec("liger_kernel") is not None:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        liger = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=device == "cuda",
                                         epsilon_high=0.28, loss_type="dapo")
        found["liger"] = lambda h, w, t, a, m, o: liger(h, w, t, m.long(), a, old_per_token_logps=o)[0]
    return found


def run_provider(name: str, shape_key: str, device: str, rep: int) -> list[dict]:
    """Measure one provider in this process (the parent runs each provider in its own process)."""
    n, h, v = SHAPES[shape_key]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    inputs = make_inputs(n, h, v, dtype, device)
    fn = providers(device)[name]
    hidden = inputs[0].detach().requires_grad_()
    weight = inputs[1].detach().requires_grad_()

    def step():
        hidden.grad = weight.grad = None
        fn(hidden, weight, *inputs[2:]).backward()

    m = measure(step, device, warmup=1, rep=rep)
    shape = f"N={n} H={h} V={v} {str(dtype).replace('torch.', '')}"
    print(f"  {name:10s} {m.median_ms:10.1f} ms  (p20 {m.p20_ms:.1f}, p80 {m.p80_ms:.1f})  "
          f"peak +{m.peak_mem_mb:9.1f} MiB", flush=True)
    return rows_for("fused_linear_policy_loss", name, shape, m, device)


def print_table(rows: list[dict]) -> None:
    """Markdown table of time and peak memory with ratios to the naive provider."""
    value = {(r["provider"], r["metric"]): float(r["value"]) for r in rows}
    names = list(dict.fromkeys(r["provider"] for r in rows))
    if "naive" not in names:
        return
    t0, m0 = value[("naive", "time_ms_median")], value[("naive", "peak_mem_mb")]
    print(f"\n{rows[0]['shape']} on {rows[0]['device']} (fwd+bwd; ratios to naive)")
    print("| provider | time ms | x naive time | peak MiB | x naive memory |\n|---|---|---|---|---|")
    for name in names:
        t, m = value[(name, "time_ms_median")], value[(name, "peak_mem_mb")]
        print(f"| {name} | {t:.1f} | {t / t0:.2f} | {m:.0f} | {m / max(m0, 1e-9):.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shape (N=512, H=256, V=32000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--providers", nargs="*", help="subset of naive, reference, triton, liger")
    parser.add_argument("--out", default=str(RESULTS_DIR / "policy_loss.csv"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    key = "quick" if args.quick else args.device
    if args.child:
        emit_rows(run_provider(args.child, key, args.device, args.rep))
        return
    print(f"fused_linear_policy_loss fwd+bwd on {device_name(args.device)} (on a CPU one process per provider)",
          flush=True)
    child_argv = list(sys.argv[1:] if argv is None else argv)
    jobs = [["--child", name] for name in providers(args.device) if not args.providers or name in args.providers]
    rows, failed = run_jobs(__spec__.name, child_argv, jobs, args.device,
                            lambda job: run_provider(job[1], key, args.device, args.rep))
    if rows:
        print_table(rows)
    finish(rows, failed, args.out, plot=not args.no_plot)


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_policy_loss", lambda: main() or 0))
