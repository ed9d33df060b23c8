"""``rpo-analyze``: where in a response its outcome is decided, and the truncation L that RPO needs there.

The segment analysis of the RPO paper, as a tool. For a sample of training questions, one response per question
(sampled from the policy, or taken from an experience cache with ``--cache``) is cut at kept shares
s = 0, 0.1, ..., 0.9, 0.95, 0.975 of its tokens (the cut: m = len - round(s * len) tokens from the end), and G
continuations are sampled from each cut, each up to the rollout's length limit; s = 1 is the response as it is.
Per kept share it reports:

- pass rate: the share of continuations whose full response (kept prefix + continuation) is correct;
- open share: the share of groups with both correct and wrong continuations (the groups that carry a GRPO signal);
- flip rate: the share of continuations whose outcome differs from the original response's;
- tokens: mean tokens generated per continuation, and the mean cut m.

The recommendation: RPO draws m ~ U{0..L} per group. With open(m) the open share at a cut of m tokens (linear between
the measured cuts), RPO's expected open share is the mean of open(m) over m = 0..L; the recommended L is the smallest
whose expected open share reaches ``--keep-open`` (default 0.5) of full regeneration's, at a token cost of about L / 2
per sample. Results (``segments.csv``, ``segments.json``, ``segments.png``) go to ``<out_dir>/analysis`` unless
``--out`` says otherwise; a rerun with the same settings reuses the shares already measured.

    rpo-analyze                                   the default recipe's task and warm model
    rpo-analyze --recipe tiny-cpu-addition        the counter-example, whose outcome is decided early
    rpo-analyze --recipe my.yaml --cache runs/x/checkpoints/step-000040/cache.safetensors --questions 128
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import load_recipe
from .data import Question
from .groups import sample_and_score
from .runtime.atomic import atomic_savefig, atomic_write, atomic_write_json
from .runtime.errors import ArgumentParser, UsageError, add_debug_flag, report_usage_errors
from .runtime.seeding import derive_seed

# 0, 0.1, ..., 1.0 and two finer cuts near the end, where a task like the paper's decides its outcome
DEFAULT_SHARES = tuple(sorted({round(0.1 * i, 1) for i in range(11)} | {0.95, 0.975}))
COLUMNS = ("kept_share", "cut_tokens", "pass_rate", "open_share", "flip_rate", "tokens_per_continuation")


@dataclass(frozen=True)
class AnalysisConfig:
    """questions: how many training questions; group_size: continuations per cut (None: the recipe's G); shares:
    kept shares in [0, 1]; keep_open: the share of full regeneration's open groups the recommended L must keep."""

    questions: int = 64
    group_size: int | None = None
    shares: tuple[float, ...] = DEFAULT_SHARES
    keep_open: float = 0.5

    def __post_init__(self):
        if isinstance(self.questions, bool) or not isinstance(self.questions, int) or self.questions < 1:
            raise UsageError(f"--questions must be an int >= 1, got {self.questions!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 2):
            raise UsageError(f"--group-size must be an int >= 2 (open groups need two samples), got {self.group_size}")
        if not self.shares or any(not 0.0 <= s <= 1.0 for s in self.shares) or 0.0 not in self.shares:
            raise UsageError(f"--shares must be kept shares in [0, 1] including 0 (full regeneration), got "
                             f"{list(self.shares)}")
        if not 0.0 < self.keep_open <= 1.0:
            raise UsageError(f"--keep-open must be in (0, 1], got {self.keep_open}")


def original_responses(cfg, inputs, questions: list[Question], cache_path: str | None) -> list[list[int]]:
    """One response per question: from the experience cache at ``cache_path``, or sampled from the policy."""
    if cache_path:
        from .cache import ExperienceCache

        cache = ExperienceCache.load(cache_path)
        missing = [q.id for q in questions if q.qid not in cache]
        if missing:
            raise UsageError(f"--cache {cache_path}: no entry for question {missing[0]!r} ({len(missing)} of "
                             f"{len(questions)} missing); the cache was written for other data or model settings")
        return [list(cache.get(q.qid, q.prompt_ids).response_ids) for q in questions]
    params = cfg.rollout.sampling_params(
        cfg.rollout.max_response_len,
        seed=[derive_seed(cfg.seed, "analyze", "response", i) for i in range(len(questions))],
        stop_token_ids=inputs.stop_ids)
    out = inputs.engine.generate([q.prompt_ids for q in questions], n=1, params=params)
    return [list(group[0].token_ids) for group in out]


def measure_share(cfg, inputs, questions, responses, originals, share: float, group_size: int) -> dict:
    """Cut every response to ``share`` of its tokens, sample ``group_size`` continuations each; the share's row.
    ``share`` 1 keeps the whole response: its own outcome, nothing generated."""
    if share == 1.0:
        return {"kept_share": share, "cut_tokens": 0.0, "pass_rate": sum(originals) / len(originals),
                "open_share": 0.0, "flip_rate": 0.0, "tokens_per_continuation": 0.0}
    kept = [round(share * len(r)) for r in responses]
    prefixes = [r[:k] for r, k in zip(responses, kept)]
    budgets = [max(1, cfg.rollout.max_response_len - k) for k in kept]
    params = cfg.rollout.sampling_params(budgets, seed=[derive_seed(cfg.seed, "analyze", share, i)
                                                        for i in range(len(questions))],
                                         stop_token_ids=inputs.stop_ids)
    out = sample_and_score(inputs.engine, questions, params, inputs.tokenizer, inputs.reward_fn, prefixes=prefixes,
                           n=group_size)
    correct = [[s.correct for s in group] for group in out]
    samples = sum(len(c) for c in correct)
    return {"kept_share": share,
            "cut_tokens": sum(len(r) - k for r, k in zip(responses, kept)) / len(questions),
            "pass_rate": sum(map(sum, correct)) / samples,
            "open_share": sum(0 < sum(c) < len(c) for c in correct) / len(questions),
            "flip_rate": sum(x != o for c, o in zip(correct, originals) for x in c) / samples,
            "tokens_per_continuation": sum(len(s.completion.token_ids) for group in out for s in group) / samples}


def recommend(rows: list[dict], mean_length: float, keep_open: float) -> dict:
    """The smallest L whose expected open share under m ~ U{0..L} reaches ``keep_open`` of full regeneration's."""
    points = sorted((r["cut_tokens"], r["open_share"]) for r in rows)
    full = max(rows, key=lambda r: r["cut_tokens"])["open_share"]
    rule = (f"smallest L with mean open share over cuts m = 0..L >= {keep_open:g} x full regeneration's "
            f"({full:.3f})")
    if full == 0:
        return {"L": None, "rule": rule, "why": "no open group even with full regeneration: no GRPO signal"}

    def open_at(m: float) -> float:
        for (m0, o0), (m1, o1) in zip(points, points[1:]):
            if m0 <= m <= m1:
                return o0 if m1 == m0 else o0 + (o1 - o0) * (m - m0) / (m1 - m0)
        return points[-1][1] if m > points[-1][0] else points[0][1]

    total = 0.0
    for length in range(0, int(points[-1][0]) + 1):
        total += open_at(length)
        if total / (length + 1) >= keep_open * full:
            return {"L": length, "token_share": length / 2 / mean_length, "mean_response_tokens": mean_length,
                    "expected_open_share": total / (length + 1), "rule": rule}
    return {"L": int(points[-1][0]), "token_share": points[-1][0] / 2 / mean_length,
            "mean_response_tokens": mean_length, "expected_open_share": total / (int(points[-1][0]) + 1),
            "rule": rule, "why": "not reached below the longest cut: RPO needs cuts as long as the responses"}


def table(rows: list[dict]) -> str:
    lines = ["| kept share | cut (tokens) | pass rate | open groups | flip rate | tokens / continuation |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['kept_share']:g} | {r['cut_tokens']:.1f} | {r['pass_rate']:.3f} | {r['open_share']:.3f} | "
              f"{r['flip_rate']:.3f} | {r['tokens_per_continuation']:.1f} |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], advice: dict, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    shares = [r["kept_share"] for r in rows]
    for key, label in (("pass_rate", "pass rate"), ("open_share", "open groups (GRPO signal)"),
                       ("flip_rate", "outcome flipped")):
        ax.plot(shares, [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("kept share of the response (1 = nothing cut)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    advised = "none" if advice["L"] is None else f"L = {advice['L']} ({advice['token_share']:.1%} of the tokens)"
    ax.set_title(f"{title}\nrecommended truncation: {advised}", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def _fingerprint(cfg, settings: AnalysisConfig, cache: str | None) -> str:
    text = json.dumps([cfg.to_dict(), dataclasses.asdict(settings), cache], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def run(cfg, settings: AnalysisConfig, out: Path, cache: str | None = None) -> tuple[list[dict], dict]:
    """Measure every kept share (reusing those a previous run with the same settings finished); (rows, advice)."""
    from tqdm.auto import tqdm

    from .run_inputs import load_run_inputs

    inputs = load_run_inputs(cfg, cfg.device)
    rng = random.Random(derive_seed(cfg.seed, "analyze", "questions"))
    questions = rng.sample(inputs.train_questions, min(settings.questions, len(inputs.train_questions)))
    responses = original_responses(cfg, inputs, questions, cache)
    if any(not r for r in responses):
        raise UsageError("some responses are empty: nothing to cut; raise rollout.max_response_len or check the model")
    originals = [bool(inputs.reward_fn(q, inputs.tokenizer.decode(r, skip_special_tokens=True)).correct)
                 for q, r in zip(questions, responses)]
    fingerprint = _fingerprint(cfg, settings, cache)
    meta_path, csv_path = out / "segments.json", out / "segments.csv"
    done = {}
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("fingerprint") == fingerprint:
        with csv_path.open(newline="") as f:
            done = {float(r["kept_share"]): {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}
    group_size = settings.group_size or cfg.rollout.group_size
    results = []
    for share in tqdm(sorted(settings.shares), desc="kept shares"):
        results.append(done.get(share) or measure_share(cfg, inputs, questions, responses, originals, share,
                                                        group_size))

        def write(tmp: str, rows_so_far=tuple(results)) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows_so_far)

        atomic_write(csv_path, write)
        atomic_write_json(meta_path, {"fingerprint": fingerprint, "done": len(results)})
    mean_length = sum(map(len, responses)) / len(responses)
    advice = recommend(results, mean_length, settings.keep_open)
    atomic_write_json(meta_path, {"fingerprint": fingerprint, "done": len(results), "recipe": cfg.to_dict(),
                                  "settings": dataclasses.asdict(settings), "cache": cache,
                                  "original_pass_rate": sum(originals) / len(originals), "advice": advice})
    return results, advice


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="rpo-analyze", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipe", default="tiny-cpu", help="bundled recipe name or a YAML file")
    parser.add_argument("--questions", type=int, default=64, help="training questions to analyse (default 64)")
    parser.add_argument("--group-size", type=int, help="continuations per cut (default: the recipe's G)")
    parser.add_argument("--shares", default=",".join(map(str, DEFAULT_SHARES)),
                        help="kept shares, comma-separated (default: %(default)s)")
    parser.add_argument("--keep-open", type=float, default=0.5,
                        help="share of full regeneration's open groups the recommended L keeps (default 0.5)")
    parser.add_argument("--cache", help="an experience cache (cache.safetensors of a checkpoint) to take the "
                                        "responses from, instead of sampling them from the recipe's model")
    parser.add_argument("--out", help="output folder (default: <out_dir>/analysis)")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value, as for rpo-train")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        from .cli import resolve_model

        cfg = resolve_model(load_recipe(args.recipe, args.overrides))
        try:
            shares = tuple(float(x) for x in args.shares.split(","))
        except ValueError:
            raise UsageError(f"--shares must be comma-separated numbers, got {args.shares!r}") from None
        settings = AnalysisConfig(args.questions, args.group_size, shares, args.keep_open)
        out = Path(args.out) if args.out else Path(cfg.out_dir) / "analysis"
        rows, advice = run(cfg, settings, out, args.cache)
        print(table(rows))
        if advice["L"] is None:
            print(f"recommended truncation: none ({advice['why']})")
        else:
            print(f"recommended truncation: L = {advice['L']} tokens, about {advice['token_share']:.1%} of a "
                  f"{advice['mean_response_tokens']:.0f}-token response per sample (truncation.max_cut="
                  f"{advice['L']}); rule: {advice['rule']}" + (f"; {advice['why']}" if "why" in advice else ""))
        png = plot(rows, advice, f"segment analysis: {args.recipe}", out / "segments.png")
        print(f"results: {out / 'segments.csv'}, {out / 'segments.json'}, plot: {png}")
        return 0

    return report_usage_errors("rpo-analyze", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
