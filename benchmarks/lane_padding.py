"""How much KV memory the native engine's lanes pad away on the GPU recipes, against a paged layout: a simulation.

The engine (``rpo_train.rollout.native``) sizes one RPO call's lanes from its longest prompt + kept prefix and its
largest suffix budget; every prefix lane has that capacity, every suffix lane the largest budget. A paged layout
(block tables, ``--block`` tokens a block) would hold each entry rounded up to a block. The kernels read only each
lane's own length either way (``rpo_kernels.lane_decode_attention``'s CUDA and Triton backends), so padding costs
memory, not reads; under a KV budget memory is concurrency: how many of the call's groups fit at once.

Lengths are drawn, not measured (no GPU run of the recipes exists yet): prompts lognormal around ``--prompt-median``
tokens, full responses lognormal around each model's ``--response-median`` (sigma ``--sigma``), clipped at the
recipe's ``max_response_len``; the kept prefix is the response minus m ~ U{0..max_cut} (``truncation.max_cut``),
the suffix budget m. Per recipe and call: allocated vs used tokens, and groups that fit in ``--budget-gib`` of KV
for lanes and for pages. Writes benchmarks/results/lane_padding.json and prints a table.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from pathlib import Path

import yaml

from rpo_train.runtime.atomic import atomic_write_json
from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

RECIPES = Path(__file__).resolve().parents[1] / "rpo_train" / "recipes"
OUT = Path(__file__).resolve().parent / "results" / "lane_padding.json"
# (recipe, assumed median response tokens): R1-Distill reasons at length, Qwen2.5-Math answers in a few hundred.
MODELS = {"qwen2.5-math-1.5b-gpu": 700, "r1-distill-qwen-1.5b-gpu": 2500}
# K+V bytes per token of both 1.5B models (Qwen2 architecture): 28 layers x 2 KV heads x 128 dims x 2 x bf16.
KV_BYTES_PER_TOKEN = 28 * 2 * 128 * 2 * 2


def lognormal(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def simulate_call(rng, recipe: dict, response_median: int, args) -> dict:
    """One RPO call of the recipe: groups (prompt + kept prefix, budget) -> lane and paged token counts."""
    cap, max_cut, g = recipe["rollout"]["max_response_len"], recipe["truncation"]["max_cut"], recipe["rollout"][
        "group_size"]
    groups = []
    for _ in range(recipe["batch_questions"]):
        prompt = lognormal(rng, args.prompt_median, args.sigma, 1024)
        response = lognormal(rng, response_median, args.sigma, cap)
        m = rng.randint(0, min(max_cut, response))
        groups.append((prompt + response - m, max(m, 1)))
    p_cap, s_cap = max(p for p, _ in groups), max(b for _, b in groups)
    used = sum(p + g * b for p, b in groups)
    lanes = len(groups) * p_cap + len(groups) * g * s_cap
    block = args.block
    paged = sum(math.ceil(p / block) * block + g * math.ceil(b / block) * block for p, b in groups)
    budget = args.budget_gib * 2**30 // KV_BYTES_PER_TOKEN
    per_group_lanes = p_cap + g * s_cap
    mean_group_paged = paged / len(groups)
    return dict(used=used, lanes=lanes, paged=paged, lane_waste=1 - used / lanes, paged_waste=1 - used / paged,
                groups_fit_lanes=min(len(groups), budget // per_group_lanes),
                groups_fit_paged=min(len(groups), int(budget // mean_group_paged)))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="simulated calls per recipe")
    parser.add_argument("--prompt-median", type=int, default=150)
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma of prompt and response lengths")
    parser.add_argument("--block", type=int, default=16, help="tokens per block of the paged layout")
    parser.add_argument("--budget-gib", type=float, default=1.0, help="KV budget (the engine's default: 1 GiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    for name in ("calls", "prompt_median", "block"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("sigma", "budget_gib"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    rng = random.Random(args.seed)
    results = {}
    print(f"| recipe | median response | lane waste | paged waste ({args.block}) | lanes / paged memory | "
          f"groups fit in {args.budget_gib:g} GiB: lanes | paged |")
    print("|---|---|---|---|---|---|---|")
    for name, median in MODELS.items():
        recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
        calls = [simulate_call(rng, recipe, median, args) for _ in range(args.calls)]
        summary = {k: statistics.mean(c[k] for c in calls) for k in calls[0]}
        results[name] = dict(response_median=median, **summary)
        print(f"| {name} | {median} | {summary['lane_waste']:.0%} | {summary['paged_waste']:.1%} | "
              f"{summary['lanes'] / summary['paged']:.2f}x | {summary['groups_fit_lanes']:.1f} | "
              f"{summary['groups_fit_paged']:.1f} |")
    atomic_write_json(args.out, dict(settings=vars(args), kv_bytes_per_token=KV_BYTES_PER_TOKEN, recipes=results))
    return 0


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.lane_padding", lambda: main()))
