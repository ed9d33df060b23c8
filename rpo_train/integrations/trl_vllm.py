"""vLLM generation for ``RPOTrainer`` with a token budget per request.

RPO samples only the suffix after a kept prefix, so each row of a step has its own budget of new tokens (about the
cut m; the whole ``max_completion_length`` on the full path). TRL's ``VLLMGeneration.generate`` takes one
``max_tokens`` for the batch, and decoding every row to the largest budget would spend what RPO saves. So
``vllm_generate`` runs TRL's own ``generate`` (every other setting stays TRL's: sampling parameters,
``generation_kwargs`` with any seed, structured outputs, the tensor-parallel group, sleep mode, and in server mode the
gather, dedup and broadcast across processes) and swaps only the engine call underneath it, for that one call:

- colocate: ``vllm.LLM.generate`` gets one ``SamplingParams`` per request, a clone of TRL's with ``max_tokens`` = the
  row's budget; vLLM stops each request at its own budget.
- server: ``VLLMClient.generate`` (HTTP, main process only) takes one ``max_tokens``, so its call is split into one
  call per budget bucket (budgets in (2^(k-1), 2^k] share a bucket, capped at the bucket's largest budget: at most
  log2(max_completion_length) + 1 calls, no row decodes past twice its budget), and each completion is cut to its own
  budget (the first b tokens of a longer sample are a sample stopped at b). The buckets are made on the main process
  from the budgets gathered once from every process, so the collectives stay TRL's (one gather, one broadcast).
"""

from __future__ import annotations

import contextlib

import torch
from trl.extras.profiling import profiling_context

from .trl_config import gather_object

_COMPLETION_KEYS = ("completion_ids", "logprobs", "logprob_token_ids")  # per completion, cut to the budget
_MISSING = object()


def budget_buckets(budgets: list[int]) -> list[list[int]]:
    """Row indices grouped by budget bucket (budgets in (2^(k-1), 2^k] together), smallest bucket first."""
    buckets: dict[int, list[int]] = {}
    for i, b in enumerate(budgets):
        if b < 1:
            raise ValueError(f"vllm_generate: budget {b} of row {i}; every row needs at least one new token")
        buckets.setdefault((b - 1).bit_length(), []).append(i)
    return [buckets[k] for k in sorted(buckets)]


def group_budgets(budgets: list[int], num_generations: int) -> list[int]:
    """The budget of each group of ``num_generations`` consecutive rows (TRL's server mode sends one prompt per
    group with n = ``num_generations``, so a group must share its budget, as RPO's plan of a group does)."""
    groups = [budgets[lo:lo + num_generations] for lo in range(0, len(budgets), num_generations)]
    for k, group in enumerate(groups):
        if len(set(group)) != 1 or len(group) != num_generations:
            raise ValueError(f"vllm_generate: group {k} has budgets {group}; TRL's server mode samples "
                             f"{num_generations} completions of one request, so a group must share one budget")
    return [group[0] for group in groups]


def per_request(generate, budgets: list[int]):
    """``vllm.LLM.generate`` with request i stopping at ``budgets[i]`` new tokens (TRL's one ``SamplingParams``,
    cloned per request)."""

    def call(prompts, sampling_params, **kwargs):
        if len(prompts) != len(budgets):
            raise ValueError(f"vllm_generate: {len(prompts)} requests for {len(budgets)} budgets")
        params = []
        for b in budgets:
            params.append(sampling_params.clone())
            params[-1].max_tokens = b
        return generate(prompts, sampling_params=params, **kwargs)

    return call


def split_by_budget(generate, budgets: list[int]):
    """``VLLMClient.generate`` making one call per budget bucket of ``budgets`` (one per prompt) and cutting each
    completion to its prompt's budget; same return as one call."""

    def call(prompts, n: int = 1, max_tokens: int | None = None, **kwargs):
        if len(prompts) != len(budgets):
            raise ValueError(f"vllm_generate: {len(prompts)} prompts for {len(budgets)} budgets")
        out: dict = {"prompt_ids": [None] * len(prompts)} | {key: [None] * (len(prompts) * n) for key in
                                                                _COMPLETION_KEYS}
        for rows in budget_buckets(budgets):
            got = generate(prompts=[prompts[i] for i in rows], n=n, max_tokens=max(budgets[i] for i in rows),
                           **kwargs)
            for j, i in enumerate(rows):
                out["prompt_ids"][i] = got["prompt_ids"][j]
                for key in _COMPLETION_KEYS:
                    if got.get(key) is None:
                        out[key] = None
                    elif out[key] is not None:
                        out[key][i * n:(i + 1) * n] = [seq[:budgets[i]] for seq in got[key][j * n:(j + 1) * n]]
        return out

    return call


@contextlib.contextmanager
def swapped(owner, name: str, replacement):
    """``owner.name`` is ``replacement`` inside the block (an instance attribute over the method), and what it was
    after (an instance attribute already there, e.g. someone's spy, is put back)."""
    before = vars(owner).get(name, _MISSING)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        if before is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, before)


def vllm_generate(trainer, prompt_ids: list[list[int]], budgets: list[int],
                  num_generations: int) -> tuple[list[list[int]], list[list[float]] | None]:
    """(completion ids, sampler log-probs) of each row of ``prompt_ids``, row i stopping at ``budgets[i]`` new
    tokens (or EOS), through ``trainer``'s TRL vLLM backend: the contract of TRL's ``_generate_single_turn`` under
    vLLM (rows repeated ``num_generations`` times in a row; the sampled token's log-prob, None where vLLM gave NaN),
    with a budget per request. Collective like TRL's call: every process calls it the same number of times."""
    if len(budgets) != len(prompt_ids):
        raise ValueError(f"vllm_generate: {len(prompt_ids)} rows for {len(budgets)} budgets")
    vg = trainer.vllm_generation
    if trainer.state.global_step != trainer._last_loaded_step:  # weight sync as in TRL's _generate_single_turn
        with profiling_context(trainer, "sync_weights"):
            vg.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step
    swap = contextlib.nullcontext()
    if vg.mode == "server":
        parts = gather_object([list(budgets)])
        if len({len(part) for part in parts}) > 1:  # TRL's server mode slices the results by its own row count
            raise ValueError(f"vllm_generate: server mode needs the same number of rows on every process, got "
                             f"{[len(part) for part in parts]}")
        everyone = group_budgets([b for part in parts for b in part], num_generations)  # TRL's deduped order
        if trainer.accelerator.is_main_process:
            swap = swapped(vg.vllm_client, "generate", split_by_budget(vg.vllm_client.generate, everyone))
    else:
        if vg.tensor_parallel_size > 1:  # TRL's generate gathers the prompts of the TP group: the budgets likewise
            parts = [None] * vg.tensor_parallel_size
            torch.distributed.all_gather_object(parts, list(budgets), group=vg.tp_group)
            budgets = [b for part in parts for b in part]
        swap = swapped(vg.llm, "generate", per_request(vg.llm.generate, budgets))
    with swap:
        _, ids, logprobs, _ = vg.generate(prompts=prompt_ids, images=None, num_generations=num_generations,
                                          profiler=profiling_context(trainer, "vLLM.generate"))
    if logprobs is not None:  # vLLM gives the top-k per token; keep the sampled token's (TRL's top-1)
        logprobs = [[lp[0] for lp in seq] for seq in logprobs]
    return [[int(t) for t in seq] for seq in ids], logprobs
