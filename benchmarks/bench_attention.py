"""Benchmark of one decode step with shared prefixes: B groups x G sequences, prefix P tokens, suffix S tokens.

Providers, side by side on one device (on a CPU each provider and shape in its own process, providers interleaved):
sdpa_dup (torch SDPA on the G-fold duplicated KV), lane_reference and, on a GPU, lane_triton, lane_cuda, flash_attn
and flashinfer_cascade where they run, as ``benchmarks.cases.attention`` defines them with the shapes and
inputs (the pytest benchmarks, ``benchmarks/test_bench_kernels.py``, measure the same cases).

Grid P in {512, 2048, 8192}, G in {4, 8, 16}, S in {64, 256}; ``--quick``: P in {512, 2048}, G in {4, 16}, S = 64;
``--prefix``, ``--group-sizes`` and ``--suffix`` replace an axis (the GPU suite: P 1024 4096 16384, G 8 16, S 64).
Hq/Hkv = 32/8, D = 128, fp32 on a CPU and bf16 on a GPU. Metrics per shape: time, peak memory, effective GB/s =
bytes of KV that must be read (B*P + B*G*S tokens) / time, its share of the device's measured copy bandwidth
(``bandwidth_share``; the copy is measured once per run and recorded as op ``copy``), and kv_store_mb = the KV that
provider's layout holds. Rows go to benchmarks/results/attention.csv (plot beside it); a table, the speed-ups and
the growth ratios are printed.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .cases.attention import GRID, GROUPS, HKV, HQ, QUICK, D, decode_call, provider_names, shapes
from .harness import RESULTS_DIR, copy_bandwidth_gbps, device_name, emit_rows, finish, measure, rows_for, run_jobs


def run_provider(name: str, shape: tuple[int, int, int], b: int, device: str, rep: int) -> list[dict]:
    """Measure one provider on one (P, G, S) in this process (the parent runs each in its own process)."""
    fn, label, held, must_read = decode_call(name, shape, b, device)
    m = measure(fn, device, warmup=2, rep=rep)
    gbps = must_read / (m.median_ms * 1e-3) / 1e9
    print(f"  {name:18s} {label:38s} {m.median_ms:9.3f} ms  {gbps:7.2f} GB/s  kv {held / 2**20:8.1f} MiB", flush=True)
    rows = rows_for("attention_decode", name, label, m, device)
    extra = {"gbps_effective": gbps, "kv_store_mb": held / 2**20}
    return rows + [dict(rows[0], metric=k, value=f"{v:.6g}") for k, v in extra.items()]


def summarize(rows: list[dict], grid: dict, b: int) -> None:
    """Markdown table (time per provider, speed-up of each over sdpa_dup, share of the copy bandwidth) and how each
    provider's time grows with P and G."""
    value = {(r["provider"], r["shape"], r["metric"]): float(r["value"]) for r in rows}
    t = {(n, shape): v for (n, shape, metric), v in value.items() if metric == "time_ms_median"}
    names = list(dict.fromkeys(r["provider"] for r in rows if r["op"] == "attention_decode"))
    others = [n for n in names if n != "sdpa_dup"]
    dtype = next(r["shape"] for r in rows if r["op"] == "attention_decode").split()[-1]
    copy = next((float(r["value"]) for r in rows if r["op"] == "copy"), None)
    print(f"\ndecode step on {rows[0]['device']} ({dtype}, Hq/Hkv {HQ}/{HKV}, D {D}, B {b}); time in ms"
          + (f"; measured copy bandwidth {copy:.0f} GB/s" if copy else ""))
    print("| P | G | S | " + " | ".join(f"{n} ms" for n in names) + " | "
          + " | ".join(f"sdpa_dup / {n}" for n in others) + " | " + " | ".join(f"{n} GB/s share" for n in others)
          + " |")
    print("|---" * (3 + len(names) + 2 * len(others)) + "|")
    for p, g, s in shapes(grid):
        key = f"B{b} G{g} P{p} S{s} h{HQ}/{HKV} d{D} {dtype}"
        cells = [f"{t[(n, key)]:.3f}" if (n, key) in t else "-" for n in names]
        speed = [f"{t[('sdpa_dup', key)] / t[(n, key)]:.2f}" if ("sdpa_dup", key) in t and (n, key) in t else "-"
                 for n in others]
        share = [f"{value[(n, key, 'bandwidth_share')]:.2f}" if (n, key, "bandwidth_share") in value else "-"
                 for n in others]
        print(f"| {p} | {g} | {s} | " + " | ".join(cells + speed + share) + " |")
    p_lo, p_hi, g_lo, g_hi = min(grid["P"]), max(grid["P"]), min(grid["G"]), max(grid["G"])
    if p_lo == p_hi or g_lo == g_hi:
        return
    print(f"\ngrowth of the time from P={p_lo} to P={p_hi}: (t_hi - t_lo) at G={g_hi} / (t_hi - t_lo) at G={g_lo} "
          f"(1 = the prefix costs once per group; {g_hi / g_lo:.0f} = once per sequence)")
    def key(n, p, g, s):
        return (n, f"B{b} G{g} P{p} S{s} h{HQ}/{HKV} d{D} {dtype}")

    for s in grid["S"]:
        for n in names:
            if all(key(n, p, g, s) in t for p in (p_lo, p_hi) for g in (g_lo, g_hi)):
                slope = [max(t[key(n, p_hi, g, s)] - t[key(n, p_lo, g, s)], 1e-9) for g in (g_lo, g_hi)]
                print(f"  S={s} {n:18s} {slope[1] / slope[0]:.2f}  (+{slope[0]:.2f} ms at G={g_lo}, "
                      f"+{slope[1]:.2f} ms at G={g_hi})")


def with_bandwidth_share(rows: list[dict], copy_gbps: float) -> list[dict]:
    """Add ``bandwidth_share`` = effective GB/s / measured copy GB/s to every shape's rows."""
    extra = [dict(r, metric="bandwidth_share", value=f"{float(r['value']) / copy_gbps:.6g}")
             for r in rows if r["metric"] == "gbps_effective"]
    return rows + extra


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="P in {512, 2048}, G in {4, 16}, S = 64")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--groups", type=int, default=GROUPS, help="B, the number of groups")
    parser.add_argument("--prefix", type=int, nargs="+", help="prefix lengths P instead of the grid's (e.g. 4096)")
    parser.add_argument("--group-sizes", type=int, nargs="+", help="group sizes G instead of the grid's")
    parser.add_argument("--suffix", type=int, nargs="+", help="suffix lengths S instead of the grid's")
    parser.add_argument("--rep", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads per provider (default: torch's choice)")
    parser.add_argument("--providers", nargs="*", help="subset of sdpa_dup, lane_reference, lane_triton, lane_cuda, "
                                                       "flash_attn, flashinfer_cascade")
    parser.add_argument("--out", default=str(RESULTS_DIR / "attention.csv"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    grid = dict(QUICK if args.quick else GRID)
    for axis, given in (("P", args.prefix), ("G", args.group_sizes), ("S", args.suffix)):
        if given:
            if min(given) < 1:
                parser.error(f"--{ {'P': 'prefix', 'G': 'group-sizes', 'S': 'suffix'}[axis]}: expected positive "
                             f"ints, got {given}")
            grid[axis] = tuple(given)
    if args.threads:
        torch.set_num_threads(args.threads)

    def child(job_args) -> list[dict]:
        return run_provider(job_args.child, shapes(grid)[job_args.shape], args.groups, args.device, args.rep)

    if args.child:
        emit_rows(child(args))
        return
    print(f"shared-prefix decode on {device_name(args.device)} (on a CPU one process per provider and shape, "
          f"providers interleaved, so a change of machine load hits them alike), threads: "
          f"{args.threads or 'default'}", flush=True)
    child_argv = list(sys.argv[1:] if argv is None else argv)
    names = [n for n in provider_names(args.device) if not args.providers or n in args.providers]
    jobs = [["--child", name, "--shape", str(i)] for i in range(len(shapes(grid))) for name in names]
    rows, failed = run_jobs(__spec__.name, child_argv, jobs, args.device,
                            lambda job: child(parser.parse_args([*child_argv, *job])))
    copy = copy_bandwidth_gbps(args.device, mib=2048 if args.device == "cuda" else 256)
    print(f"measured copy bandwidth: {copy:.1f} GB/s (bytes read + written)", flush=True)
    if rows:
        stamp = {k: rows[0][k] for k in ("device", "version", "date")}
        rows = with_bandwidth_share(rows, copy) + [
            dict(stamp, op="copy", provider="torch", shape="device-to-device copy", metric="gbps",
                 value=f"{copy:.6g}")]
        summarize(rows, grid, args.groups)
    finish(rows, failed, args.out, plot=not args.no_plot)


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_attention", lambda: main() or 0))
