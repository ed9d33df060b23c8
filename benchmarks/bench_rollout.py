"""Rollout benchmark shaped like RPO: full-path vs RPO suffix rollouts, native engine vs HF generate (vs vLLM).

Workload (B prompts of P tokens, G samples each, a cached response of C tokens, cuts m ~ U{0..L}) and providers
(native, hf, vllm when installed) as ``benchmarks.cases.engine`` defines them; the pytest benchmarks
(``benchmarks/test_bench_engine.py``) measure the same cases. Providers run in one run on one device, their timed
calls interleaved. No prefix KV survives from one measured call to the next (native: reuse_prefix_kv off; vLLM:
prefix cache reset): in training every step brings new weights, so every call prefills its groups as an RPO step does.

``python -m benchmarks.bench_rollout`` runs B=8, G=8, C=512, L=60, P=32 with a random tiny Qwen2 (hidden 128, 2
layers, vocab 300) on a CPU, then, when it has been converted, the real SmolLM2-135M-Instruct
(checkpoints/smollm2-135m-instruct) at B=8, G=6, C=128, L=58, P=32; ``--arch qwen2-0.5b`` a random model of that
shape (``benchmarks.models``; the GPU suite's), ``--model DIR`` one real checkpoint, ``--quick`` a smoke-sized shape
(random model only). Rows
(time, peak memory, generated tokens per sample, tokens/s, RPO/full and native/hf ratios) go to
benchmarks/results/rollout.csv, plots beside it, and a table is printed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from rpo_train.model.precision import resolve_precision
from rpo_train.runtime.atomic import atomic_savefig
from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .cases.engine import ROLLOUT_SHAPES, make_engines, random_checkpoint, rollout_call, workload
from .harness import RESULTS_DIR, device_name, measure_interleaved, record, rows_for

# The real checkpoint measured beside the random model when it has been converted (scripts/convert_smollm2.py).
SMOLLM2 = Path(__file__).resolve().parent.parent / "checkpoints" / "smollm2-135m-instruct"


def _extra(base: dict, metric: str, value: float) -> dict:
    return {**base, "metric": metric, "value": f"{value:.6g}"}


def bench(engines: dict, w: dict, shape: str, device: str, rep: int) -> list[dict]:
    """Every engine on the full-path then the RPO workload, the engines' timed calls interleaved per mode."""
    rows, table, outs = [], {}, {}
    for mode in ("full", "rpo"):
        calls = {name: rollout_call(name, engine, w, mode, outs.setdefault((name, mode), {}))
                 for name, engine in engines.items()}
        for name, m in measure_interleaved(calls, device, warmup=1, rep=rep).items():
            groups = outs[(name, mode)]["groups"]
            tokens = sum(len(c.token_ids) for g in groups for c in g)
            samples = sum(len(g) for g in groups)
            tps = tokens / (m.median_ms / 1e3)
            table[(name, mode)] = (tokens / samples, m.median_ms, tps, m.peak_mem_mb)
            print(f"  {name:6s} {mode:4s} {tokens / samples:8.1f} tok/sample {m.median_ms:10.1f} ms "
                  f"{tps:10.0f} tok/s  peak +{m.peak_mem_mb:.0f} MiB", flush=True)
            base = rows_for("rollout", f"{name}-{mode}", shape, m, device)
            rows += base + [_extra(base[0], "tokens_per_sample", tokens / samples),
                            _extra(base[0], "tokens_per_s", tps)]
    for name in engines:
        (tf, msf, *_), (tr, msr, *_) = table[(name, "full")], table[(name, "rpo")]
        stamp = rows[-1]
        rows += [_extra({**stamp, "provider": f"{name}-rpo/full"}, "tokens_per_sample_ratio", tr / tf),
                 _extra({**stamp, "provider": f"{name}-rpo/full"}, "time_ratio", msr / msf)]
    peers = [n for n in engines if n != "native"] if "native" in engines else []
    for other in peers:
        for mode in ("full", "rpo"):
            speed = table[("native", mode)][2] / table[(other, mode)][2]
            rows.append(_extra({**rows[-1], "provider": f"native/{other}-{mode}"}, "tokens_per_s_ratio", speed))
    print_table(table, shape, device)
    return rows


def print_table(table: dict, shape: str, device: str) -> None:
    print(f"\nrollout {shape} on {device_name(device)}")
    print("| provider | mode | tokens/sample | wall ms | tokens/s | RPO/full tokens | RPO/full time |")
    print("|---|---|---|---|---|---|---|")
    for (name, mode), (tps_, ms, tps, _) in table.items():
        ratio = ""
        if mode == "rpo":
            tf, msf = table[(name, "full")][:2]
            ratio = f"{tps_ / tf:.3f} | {ms / msf:.3f}"
        else:
            ratio = " | "
        print(f"| {name} | {mode} | {tps_:.1f} | {ms:.0f} | {tps:.0f} | {ratio} |")
    for other in dict.fromkeys(name for name, _ in table):
        for mode in ("full", "rpo"):
            if other != "native" and ("native", mode) in table:
                ratio = table[("native", mode)][2] / table[(other, mode)][2]
                print(f"native / {other} tokens/s ({mode}): {ratio:.2f}x")


def plot_summary(rows: list[dict], out: Path) -> Path:
    """Three panels (tokens/sample, wall time, tokens/s) per provider-mode for the rows of this run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    value = {(r["provider"], r["metric"]): float(r["value"]) for r in rows}
    names = [p for p in dict.fromkeys(r["provider"] for r in rows) if (p, "tokens_per_s") in value]
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.5 + 0.45 * len(names)))
    for ax, (metric, label) in zip(axes, (("tokens_per_sample", "generated tokens / sample"),
                                          ("time_ms_median", "rollout wall time (ms)"),
                                          ("tokens_per_s", "generated tokens / s"))):
        ax.barh(names, [value[(n, metric)] for n in names])
        ax.set_xlabel(label)
        ax.invert_yaxis()
    fig.suptitle(f"{rows[0]['shape']} | {rows[0]['device']}", fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized shape")
    parser.add_argument("--model", help="HF-format checkpoint dir (default: a random Qwen2 of --arch)")
    parser.add_argument("--arch", default="tiny-h128", choices=("tiny-h128", "qwen2-0.5b", "qwen2-1.5b"),
                        help="shape of the random model when no --model is given")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on a CPU")
    for key in ("B", "G", "C", "L", "P"):
        parser.add_argument(f"--{key}", type=int)
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="the engines' weights; auto: a training run's engine copy under dtype auto (bf16 on a GPU "
                             "or a CPU with bf16 instructions, else fp32; rpo_train.model.precision)")
    parser.add_argument("--providers", nargs="*", default=["native", "hf", "vllm"])
    parser.add_argument("--out", default=str(RESULTS_DIR / "rollout.csv"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--no-smollm2", action="store_true",
                        help="measure only the random model even when the SmolLM2 checkpoint has been converted")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = dict(ROLLOUT_SHAPES["quick" if args.quick else "default"])
    overrides = {k: getattr(args, k) for k in s if getattr(args, k) is not None}
    s.update(overrides)
    dtype = resolve_precision(args.device, "auto", args.dtype).engine
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            models = [(Path(args.model), Path(args.model).name, s)]
        else:
            random_desc = "tiny-qwen2-h128-l2-v300" if args.arch == "tiny-h128" else f"random-{args.arch}"
            models = [(random_checkpoint(Path(tmp), args.arch, s["P"] + s["C"] + 8), random_desc, s)]
            if args.quick or args.no_smollm2:
                pass
            elif (SMOLLM2 / "config.json").is_file():
                models.append((SMOLLM2, SMOLLM2.name, {**ROLLOUT_SHAPES["smollm2"], **overrides}))
            else:
                print(f"SmolLM2-135M not measured: no converted checkpoint at {SMOLLM2} "
                      f"(python scripts/convert_smollm2.py --out checkpoints/smollm2-135m-instruct)", flush=True)
        per_model = [(desc, _bench_model(path, desc, shape_args, args, dtype)) for path, desc, shape_args in models]
    path = record([r for _, rows in per_model for r in rows], args.out, plot=not args.no_plot)
    if not args.no_plot:
        for i, (desc, rows) in enumerate(per_model):
            name = path.stem + "_summary" + ("" if i == 0 else f"_{desc}") + ".png"
            print(f"plot: {plot_summary(rows, path.with_name(name))}")


def _bench_model(path: Path, model_desc: str, s: dict, args, dtype: torch.dtype) -> list[dict]:
    from rpo_train.rollout.model_folder import load_config

    config = load_config(path)
    w = workload(**s, vocab=config.vocab_size)
    shape = (f"B={s['B']} G={s['G']} C={s['C']} L={s['L']} P={s['P']} {model_desc} "
             f"{str(dtype).replace('torch.', '')} threads={torch.get_num_threads()}")
    print(f"rollout benchmark: {shape} on {device_name(args.device)}", flush=True)
    engines = make_engines(path, args.device, dtype, args.providers)
    return bench(engines, w, shape, args.device, args.rep)


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_rollout", lambda: main() or 0))
