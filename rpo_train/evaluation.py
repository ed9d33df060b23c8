"""Sampled evaluation: what a policy finds in k tries, beside its greedy accuracy.

RPO explores less than the full path (the paper says so: its pass@N falls behind), so a run reports, with
``eval_samples: k``, two numbers over the held-out questions, each answered k times at the rollout temperature:

    pass@k = mean_q [ 1 - C(n - c_q, k) / C(n, k) ]     (c_q correct of n = k samples: the share of questions solved
                                                          at least once; the unbiased estimator of Chen et al. 2021)
    mean@k = mean_q c_q / n                              (the sampled accuracy)
"""

from __future__ import annotations

import math

from .groups import sample_and_score
from .runtime.seeding import derive_seed


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one question from ``n`` samples of which ``c`` are correct."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sampled_eval(engine, questions, cfg, tokenizer, reward_fn, stop_ids: list[int], dist,
                 step: int) -> dict[str, float]:
    """``eval/pass_at_k`` and ``eval/mean_at_k`` (k = ``cfg.eval_samples``) over ``questions``, each rank sampling
    its share with seeds from (run seed, step, question index), so the figures do not depend on the ranks."""
    k = cfg.eval_samples
    mine = dist.share(list(range(len(questions))))
    params = cfg.rollout.sampling_params(cfg.eval_max_new_tokens,
                                         seed=[derive_seed(cfg.seed, "eval", step, i) for i in mine],
                                         stop_token_ids=stop_ids)
    out = sample_and_score(engine, [questions[i] for i in mine], params, tokenizer, reward_fn, n=k)
    counts = [sum(s.correct for s in group) for group in out]
    passed, mean = dist.sum_floats([sum(pass_at_k(k, c, k) for c in counts), sum(c / k for c in counts)])
    return {"eval/pass_at_k": passed / len(questions), "eval/mean_at_k": mean / len(questions)}
