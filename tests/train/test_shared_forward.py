"""The shared-prefix forward of TRL batches (``rpo_train.model.shared_rows``, ``rpo_train.integrations.trl_shared``)
against the per-row forward.

The parity matrix: Llama, Qwen2, Qwen3, Mistral and a SmolLM2-shaped Llama (tied embeddings, GQA 3:1), bare and
LoRA-wrapped; groups of G = 1..16 rows with shared completion starts of 0..N tokens, ragged completions (one empty,
as ``mask_truncated_completions`` leaves them) and left-padded prompts of different lengths. Log-probs must agree to
1e-5 in fp32 and every trainable weight's gradient to 1e-5 relative.
"""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch

VOCAB = 300


def make_model(kind: str):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=256, initializer_range=0.1, pad_token_id=0)
    torch.manual_seed(0)
    if kind == "llama":  # untied, MQA
        return LlamaForCausalLM(LlamaConfig(num_attention_heads=4, num_key_value_heads=1, **common))
    if kind == "qwen2":  # tied, qkv bias, GQA
        return Qwen2ForCausalLM(Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                            **common))
    if kind == "qwen3":  # q/k norms, explicit head_dim
        return Qwen3ForCausalLM(Qwen3Config(num_attention_heads=4, num_key_value_heads=2, head_dim=16, **common))
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                                                **common))
    if kind == "smollm2":  # SmolLM2's layout: Llama, tied embeddings, 3 query heads per KV head
        return LlamaForCausalLM(LlamaConfig(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                                            **common))
    raise ValueError(kind)


def lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj", "up_proj"],
                                               init_lora_weights=False, task_type="CAUSAL_LM"))
    return wrapped


def trl_batch(seed: int, groups: list[tuple[int, int, int]], width: int = 24):
    """TRL's [B, P + K] layout: left-padded prompts, right-padded completions. ``groups``: (G, prompt length, shared
    completion start) per group; each row's own tokens are ragged, and the last group's last row is empty."""
    rng = random.Random(seed)

    def tokens(n):
        return [rng.randrange(1, VOCAB) for _ in range(n)]

    rows = []
    for g, p, shared in groups:
        prompt, start = tokens(p), tokens(shared)
        rows += [(prompt, start + tokens(rng.randrange(1, 9))) for _ in range(g)]
    rows[-1] = (rows[-1][0], [])
    p_max = max(len(p) for p, _ in rows)
    k = max(len(c) for _, c in rows)
    ids = torch.zeros(len(rows), p_max + k, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(rows):
        ids[i, p_max - len(p):p_max] = torch.tensor(p)
        mask[i, p_max - len(p):p_max] = 1
        ids[i, p_max:p_max + len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, p_max:p_max + len(c)] = 1
    return ids, mask, k


def per_row_logps(model, ids, mask, k):
    """TRL's per-row reading: one padded forward, log_softmax of the logits before each completion token."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -k - 1:-1].float()
    logp = torch.log_softmax(logits, -1).gather(2, ids[:, -k:, None])[..., 0]
    return logp * mask[:, -k:]


def shared_logps(model, ids, mask, k):
    from rpo_train.model.shared_rows import pack_rows, packed_logps, split_rows

    rows = split_rows(ids, mask, k)
    packed, kept, reuse = pack_rows(rows)
    return packed_logps(model, rows, packed, kept, k)[0], reuse


CASES = {  # (G, prompt length, shared completion start) per group
    "rpo": [(4, 5, 9), (3, 2, 0), (6, 7, 14)],
    "g1_and_g16": [(1, 3, 4), (16, 6, 11)],
    "grpo": [(8, 12, 0), (8, 3, 0)],
}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral", "smollm2"])
@pytest.mark.parametrize("wrap", ["bare", "lora"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_forward_equals_per_row(kind, wrap, case):
    model = make_model(kind)
    model = lora(model) if wrap == "lora" else model
    ids, mask, k = trl_batch(len(case), CASES[case])
    weights = torch.randn(ids.shape[0], k, generator=torch.Generator().manual_seed(2))
    out = {}
    for name, fn in (("per_row", per_row_logps), ("shared", shared_logps)):
        model.zero_grad(set_to_none=True)
        logp = fn(model, ids, mask, k)
        logp = logp[0] if isinstance(logp, tuple) else logp
        (logp * weights).sum().backward()
        out[name] = (logp.detach(), grads(model))
    want, got = out["per_row"][0], out["shared"][0]
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-5
    want_g, got_g = out["per_row"][1], out["shared"][1]
    assert want_g.keys() == got_g.keys() and want_g
    if wrap == "lora":
        assert all("lora_" in n for n in want_g)
    for name, g in want_g.items():
        assert float((got_g[name] - g).abs().max()) <= 1e-5 * float(g.abs().max()) + 1e-9, name


def test_token_reuse_counts_what_packing_saves():
    from rpo_train.model.shared_rows import pack_rows, split_rows

    ids, mask, k = trl_batch(0, [(4, 10, 20)])
    rows = split_rows(ids, mask, k)
    packed, kept, reuse = pack_rows(rows)
    per_row = sum(len(p) + len(c) for p, c in rows)
    assert kept == [0, 1, 2] and reuse == pytest.approx(per_row / packed.ids.numel())
    assert packed.num_context_rows == 10 + 20 and reuse > 2
    holes = mask.clone()
    holes[0, -k + 1] = 0  # a completion mask that is not a run from its start: no packing
    assert split_rows(ids, holes, k) is None
    empty = torch.zeros_like(mask)
    empty[:, :-k] = mask[:, :-k]
    assert pack_rows(split_rows(ids, empty, k))[0] is None  # nothing to score


def test_gradient_checkpointing_and_autocast(tmp_path):
    """The model's own gradient checkpointing recomputes the packed layers with the same plan; under bf16 autocast
    the log-probs stay near the fp32 ones."""
    model = lora(make_model("qwen2")).train()
    ids, mask, k = trl_batch(3, CASES["rpo"])
    exact, _ = shared_logps(model, ids, mask, k)
    exact.sum().backward()
    want = grads(model)
    ckpt = copy.deepcopy(model)
    ckpt.zero_grad(set_to_none=True)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got, _ = shared_logps(ckpt, ids, mask, k)
    got.sum().backward()
    for name, g in grads(ckpt).items():
        assert float((g - want[name]).abs().max()) <= 1e-5 * float(want[name].abs().max()) + 1e-9, name
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = shared_logps(model, ids, mask, k)
    assert float((mixed - exact.detach()).abs().max()) < 0.1


# -- in the trainers ---------------------------------------------------------------------------------------------
def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def worker():
    pytest.importorskip("trl", reason="the trainer tests need TRL (the trl extra)")
    from tests.helpers import trl_worker

    return trl_worker


@pytest.fixture(scope="module")
def model_dir(worker, tmp_path_factory):
    return worker.tiny_model(tmp_path_factory.mktemp("shared") / "model")


@pytest.mark.trl
def test_rpo_trainer_trains_the_same_with_either_forward(worker, model_dir, tmp_path):
    """beta > 0 and num_iterations = 2 send the reference and the old log-probs through the seam too."""
    runs = {}
    for shared in (True, False):
        trainer, _ = worker.build(tmp_path / str(shared), model_dir, 4, shared_forward=shared, beta=0.04,
                                  num_iterations=2, rpo_cache_init="eager", learning_rate=1e-2)
        trainer.train()
        runs[shared] = trainer
    assert runs[True]._shared_state == "on" and runs[False]._shared_state == "unchecked"
    served = [h["rpo/shared_forward"] for h in runs[True].state.log_history if "rpo/shared_forward" in h]
    assert served and min(served) == 1.0
    assert any(x != 0 for x in _losses(runs[True]))
    assert _losses(runs[True]) == pytest.approx(_losses(runs[False]), rel=1e-4, abs=1e-7)
    for (name, a), b in zip(runs[True].model.named_parameters(), runs[False].model.parameters()):
        assert float((a - b).abs().max()) <= 1e-4, name


@pytest.mark.trl
def test_a_failed_self_check_falls_back_with_one_warning(worker, model_dir, tmp_path, monkeypatch):
    from rpo_train.model import shared_rows

    real = shared_rows.prefix_once_logprobs

    def off_by_half(*args, **kwargs):
        logp, ent = real(*args, **kwargs)
        return logp + 0.5, ent

    monkeypatch.setattr(shared_rows, "prefix_once_logprobs", off_by_half)
    trainer, _ = worker.build(tmp_path, model_dir, 2, rpo_cache_init="eager")
    with pytest.warns(UserWarning, match="shared_forward is off for this run: its log-probs differ") as caught:
        trainer.train()
    assert sum("shared_forward is off" in str(w.message) for w in caught) == 1
    assert trainer._shared_state == "off"
    served = [h["rpo/shared_forward"] for h in trainer.state.log_history if "rpo/shared_forward" in h]
    assert served and max(served) == 0.0


@pytest.mark.trl
def test_low_reuse_keeps_the_per_row_forward(worker, model_dir, tmp_path):
    trainer, _ = worker.build(tmp_path, model_dir, 2, shared_forward_min_reuse=50.0, rpo_cache_init="eager")
    trainer.train()
    reuse = [h["rpo/token_reuse"] for h in trainer.state.log_history if "rpo/token_reuse" in h]
    served = [h["rpo/shared_forward"] for h in trainer.state.log_history if "rpo/shared_forward" in h]
    assert reuse and max(reuse) < 50 and max(served) == 0.0 and trainer._shared_state == "on"


@pytest.mark.trl
def test_plain_grpo_with_a_shared_prompt(worker, model_dir, tmp_path):
    """``SharedPrefixGRPOTrainer``: GRPO whose groups share their prompt in the forward trains as GRPOTrainer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rpo_train.integrations.trl_shared import SharedPrefixGRPOConfig, SharedPrefixGRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = worker.dataset(tok)
    few_shot = rows.map(lambda r: {"prompt": r["prompt"] + "=" * 60})  # a long shared prompt
    settings = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=12, learning_rate=1e-2,
                    max_steps=2, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=3,
                    beta=0.04, bf16=False, dataloader_num_workers=0)
    runs = {}
    for name, trainer_cls, config_cls in (("shared", SharedPrefixGRPOTrainer, SharedPrefixGRPOConfig),
                                          ("trl", GRPOTrainer, GRPOConfig)):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = trainer_cls(model=model, reward_funcs=[worker.Recorder()], train_dataset=few_shot,
                              args=config_cls(output_dir=str(tmp_path / name), **settings), processing_class=tok)
        trainer.train()
        runs[name] = trainer
    reuse = [h["rpo/token_reuse"] for h in runs["shared"].state.log_history if "rpo/token_reuse" in h]
    assert reuse and min(reuse) > 2.0 and runs["shared"]._shared_state == "on"
    assert _losses(runs["shared"]) == pytest.approx(_losses(runs["trl"]), rel=1e-4, abs=1e-7)
    with pytest.raises(TypeError, match="SharedPrefixGRPOConfig"):
        SharedPrefixGRPOTrainer(model=model, reward_funcs=[worker.Recorder()], args=GRPOConfig(
            output_dir=str(tmp_path / "x"), use_cpu=True, report_to="none"), train_dataset=few_shot)
    with pytest.raises(ValueError, match="shared_forward_min_reuse must be a number >= 1"):
        SharedPrefixGRPOConfig(output_dir=str(tmp_path / "y"), use_cpu=True, shared_forward_min_reuse=0.5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_shared_forward_on_gpu_bf16_within_the_rule(kind):
    """On a GPU (Triton shared-prefix attention, forward and backward) in bf16 under a LoRA wrapper: log-probs and
    LoRA gradients within 2x the per-row bf16 forward's error against the per-row fp32 one."""
    from tests.helpers.rules import assert_within_rule

    ids, mask, k = trl_batch(5, CASES["rpo"])
    ids, mask = ids.cuda(), mask.cuda()
    weights = torch.randn(ids.shape[0], k, generator=torch.Generator().manual_seed(2)).cuda()
    out = {}
    for dtype, fn in ((torch.float32, per_row_logps), (torch.bfloat16, per_row_logps),
                      (torch.bfloat16, shared_logps)):
        model = lora(make_model(kind)).to("cuda", dtype)
        logp = fn(model, ids, mask, k)
        logp = logp[0] if isinstance(logp, tuple) else logp
        (logp.float() * weights).sum().backward()
        out[(dtype, fn.__name__)] = (logp.detach().float(), {n: g.float() for n, g in grads(model).items()})
    ref, plain, shared = (out[(torch.float32, "per_row_logps")], out[(torch.bfloat16, "per_row_logps")],
                          out[(torch.bfloat16, "shared_logps")])
    assert_within_rule(shared[0], ref[0], plain[0], atol=1e-2, name="log-probs")
    for name, g in ref[1].items():
        assert_within_rule(shared[1][name], g, plain[1][name], atol=1e-3, name=name)


@pytest.mark.trl
def test_gradient_accumulation_keeps_whole_groups_in_a_micro_batch(worker, model_dir, tmp_path):
    """steps_per_generation = 2: TRL splits each generation batch over two micro-batches; shuffled by group, each
    micro-batch holds whole groups of G rows, so the training forward still shares their contexts."""
    from rpo_train.integrations.trl_shared import group_shuffle

    trainer, _ = worker.build(tmp_path, model_dir, 2, gradient_accumulation_steps=2, rpo_cache_init="eager")
    seen = []
    real = trainer._compute_loss

    def spy(model, inputs):
        _, counts = torch.unique(inputs["prompt_ids"], dim=0, return_counts=True)
        seen.append(counts.tolist())
        return real(model, inputs)

    trainer._compute_loss = spy
    trainer.train()
    assert len(seen) == 4 and all(c == [worker.GROUP] * len(c) for c in seen), seen
    served = [h["rpo/shared_forward"] for h in trainer.state.log_history if "rpo/shared_forward" in h]
    assert served and min(served) == 1.0
    batch = {"prompt_ids": torch.tensor([[1], [2], [1], [3], [2], [1]]), "x": list("abcdef"), "n": torch.tensor(3)}
    out = group_shuffle(batch)
    ids = out["prompt_ids"][:, 0].tolist()
    assert sorted((k, len(list(g))) for k, g in itertools.groupby(ids)) == [(1, 3), (2, 2), (3, 1)]  # whole groups
    prompt_of = dict(zip("abcdef", [1, 2, 1, 3, 2, 1]))
    assert [prompt_of[x] for x in out["x"]] == ids and out["n"] is batch["n"]  # every column moved alike


@pytest.mark.parametrize("wrap", ["bare", "lora"])
def test_shared_prefill_generates_what_generate_does(wrap):
    """Greedy decoding from left-padded rows, some identical: one prefill per distinct row, then ``generate`` from
    copies of its KV, gives the same tokens as ``generate`` alone; the patch is gone after the block."""
    from transformers import GenerationConfig

    from rpo_train.integrations.trl_prefill import shared_prefill

    model = make_model("llama").eval()
    model = lora(model) if wrap == "lora" else model
    rows = [[7, 8, 9, 10, 11], [7, 8, 9, 10, 11], [3, 4], [3, 4], [3, 4], [12, 13, 14]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = (ids != 0).long()
    config = GenerationConfig(do_sample=False, max_new_tokens=10, pad_token_id=0, eos_token_id=None)
    want = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    with shared_prefill(model):
        got = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    hook.remove()
    assert torch.equal(got, want)
    assert calls[0] == (3, width - 1) and "generate" not in vars(model)  # 3 distinct rows prefilled once


@pytest.mark.trl
def test_a_first_batch_with_nothing_to_score_leaves_the_check_for_later(worker, model_dir, tmp_path):
    """A first batch whose completions are all masked (mask_truncated_completions) is served per row and decides
    nothing; the next batch runs the self-check."""
    trainer, _ = worker.build(tmp_path, model_dir, 1)
    model = trainer.model
    ids, mask, k = trl_batch(0, CASES["rpo"])
    ids = ids % model.config.vocab_size  # the worker's model has the task's small vocabulary
    empty = mask.clone()
    empty[:, -k:] = 0
    with torch.no_grad():
        logp, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, empty, k)
    assert trainer._shared_state == "unchecked" and float(logp.abs().sum()) == 0.0
    with torch.no_grad():
        trainer._get_per_token_logps_and_entropies(model, ids, mask, k)
    assert trainer._shared_state == "on"
