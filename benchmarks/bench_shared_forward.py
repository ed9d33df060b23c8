"""The shared-prefix training forward against TRL's per-row forward: forward + backward on real checkpoints.

One batch of RPO groups in TRL's layout ([left-padded prompt ; right-padded completion] per row): each group's G
rows share a context of P tokens (a prompt of min(P/4, 64) tokens + the kept prefix) and have their own S-token
suffixes. Providers, timed in one process with their calls interleaved (ratios see the same machine state), peak
memory each alone in its own process on a CPU; the same batch and weights:
  per_row  TRL 1.16's GRPOTrainer forward: the model with TRL's fused lm_head (``add_fused_lm_head``, log-probs and
           entropies), one padded row per sample: the context is computed G times
  shared   ``rpo_train.integrations.trl_shared``: rows split and packed on the host, one packed forward through the
           model's own forward (the context once), log-probs and entropies by ``rpo_kernels.token_logprobs``
The step is log-probs -> a weighted sum -> backward, the host packing included. The goal (issue 33) is
time(shared) / time(per_row) <= 1.3 x the ideal token ratio (P + G S) / (G (P + S)).

    python -m benchmarks.bench_shared_forward --model bundled --shapes 224,32,8 224,16,8
    python -m benchmarks.bench_shared_forward --model checkpoints/smollm2-135m-instruct --shapes 512,64,8

Rows go to benchmarks/results/shared_forward.csv (appended) with a plot.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .harness import (
    RESULTS_DIR,
    Measurement,
    device_name,
    emit_rows,
    finish,
    measure,
    measure_interleaved,
    rows_for,
    run_jobs,
)

PROVIDERS = ("per_row", "shared")


def load_model(name: str, device: str):
    """``bundled`` (the tiny-cpu recipe's warm model), ``random:<arch>`` (``benchmarks.models``, e.g.
    random:qwen2-0.5b, no download) or an HF checkpoint folder; fp32 on a CPU, bf16 on a GPU."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name.startswith("random:"):
        from .models import random_qwen2

        return random_qwen2(name.split(":", 1)[1], device, dtype).train()
    if name == "bundled":
        from rpo_train.cli import resolve_model
        from rpo_train.config import load_recipe

        name = resolve_model(load_recipe("tiny-cpu", [])).model
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True).to(device).train()


def trl_batch(shape: tuple[int, int, int, int], vocab: int, seed: int = 0):
    """(input_ids, attention_mask, K) of ``groups`` groups of G rows: context P (prompt + prefix), suffix S."""
    p, s, g, groups = shape
    rng = random.Random(seed)
    rows = []
    for _ in range(groups):
        prompt_len = max(1, min(64, p // 4))
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        prefix = [rng.randrange(3, vocab) for _ in range(p - prompt_len)]
        rows += [(prompt, prefix + [rng.randrange(3, vocab) for _ in range(s)]) for _ in range(g)]
    width, k = max(len(a) for a, _ in rows), max(len(b) for _, b in rows)
    ids = torch.zeros(len(rows), width + k, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (a, b) in enumerate(rows):
        ids[i, width - len(a):width], mask[i, width - len(a):width] = torch.tensor(a), 1
        ids[i, width:width + len(b)], mask[i, width:width + len(b)] = torch.tensor(b), 1
    return ids, mask, k


def make_step(provider: str, model_name: str, shape, device: str):
    """(step, label): one forward + backward of ``provider`` on the batch of ``shape``."""
    from trl.trainer.utils import add_fused_lm_head

    from rpo_train.model.shared_rows import pack_rows, packed_logps, split_rows

    model = load_model(model_name, device)
    ids, mask, k = trl_batch(shape, model.config.vocab_size)
    ids, mask = ids.to(device), mask.to(device)
    weights = torch.randn(ids.shape[0], k, generator=torch.Generator().manual_seed(1)).to(device)
    if provider == "per_row":
        add_fused_lm_head(model, outputs=("log_probs", "entropy"))

        def logps():
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-k] = -100
            out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            return out.log_probs[:, -k:], out.entropy[:, -k:]
    else:
        def logps():
            rows = split_rows(ids, mask, k)
            packed, kept, _ = pack_rows(rows)
            return packed_logps(model, rows, packed.to(device), kept, k)

    def step():
        model.zero_grad(set_to_none=True)
        lp, ent = logps()
        ((lp * weights).sum() + 0.0 * ent.sum()).backward()

    p, s, g, groups = shape
    ideal = (p + g * s) / (g * (p + s))
    dtype = "bf16" if torch.device(device).type == "cuda" else "fp32"
    name = model_name.rstrip("/").split("/")[-1].removeprefix("random:")
    return step, f"{name} P={p} S={s} G={g} x{groups} {dtype} ideal={ideal:.3f}"


def print_table(rows: list[dict]) -> None:
    value = {(r["shape"], r["provider"], r["metric"]): float(r["value"]) for r in rows}
    print("| shape | per-row ms | shared ms | x per-row time | ideal | x ideal | per-row MiB | shared MiB |\n"
          "|---|---|---|---|---|---|---|---|")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        try:
            t0, t1 = value[(shape, "per_row", "time_ms_median")], value[(shape, "shared", "time_ms_median")]
            m0, m1 = value[(shape, "per_row", "peak_mem_mb")], value[(shape, "shared", "peak_mem_mb")]
        except KeyError:
            continue
        ideal = float(shape.rsplit("ideal=", 1)[1])
        print(f"| {shape.split(' ideal=')[0]} | {t0:.0f} | {t1:.0f} | {t1 / t0:.3f} | {ideal:.3f} | "
              f"{t1 / t0 / ideal:.2f} | {m0:.0f} | {m1:.0f} |")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="bundled, random:<arch>, or an HF checkpoint folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="*", default=["224,32,8,2", "224,16,8,2"],
                        help="P,S,G[,groups] (groups default 1)")
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: default)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "shared_forward.csv"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes]
        shapes = [s if len(s) == 4 else (*s, 1) for s in shapes]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 4 or min(s) < 1 for s in shapes):
        parser.error(f"--shapes: expected P,S,G[,groups] of positive ints, got {args.shapes}")

    def child(job: str) -> list[dict]:
        """``mem:<provider>:<i>``: peak memory of one provider alone in this process; ``time:<i>``: both providers'
        times, their calls interleaved (a ratio then sees the same machine state)."""
        kind, *rest = job.split(":")
        if kind == "mem":
            name, index = rest
            step, label = make_step(name, args.model, shapes[int(index)], args.device)
            peak = measure(step, args.device, warmup=1, rep=1).peak_mem_mb
            return [r for r in rows_for("shared_forward", name, label, Measurement(0, 0, 0, peak), args.device)
                    if r["metric"] == "peak_mem_mb"]
        steps = {name: make_step(name, args.model, shapes[int(rest[0])], args.device) for name in PROVIDERS}
        got = measure_interleaved({n: s for n, (s, _) in steps.items()}, args.device, warmup=1, rep=args.rep)
        out = []
        for name, m in got.items():
            print(f"  {steps[name][1]:60s} {name:8s} {m.median_ms:10.1f} ms", flush=True)
            out += [r for r in rows_for("shared_forward", name, steps[name][1], m, args.device)
                    if r["metric"] != "peak_mem_mb"]
        return out

    if args.child:
        emit_rows(child(args.child))
        return
    print(f"training forward + backward, TRL per-row vs shared, on {device_name(args.device)}", flush=True)
    child_argv = list(sys.argv[1:] if argv is None else argv)
    jobs = [["--child", job] for i in range(len(shapes))
            for job in (f"time:{i}", *(f"mem:{name}:{i}" for name in PROVIDERS))]
    rows, failed = run_jobs(__spec__.name, child_argv, jobs, args.device, lambda job: child(job[1]))
    if rows:
        print_table(rows)
    finish(rows, failed, args.out, plot=not args.no_plot)


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_shared_forward", lambda: main() or 0))
