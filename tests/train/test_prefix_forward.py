"""Prefix-once policy forward: log-probs, loss and every parameter gradient equal the plain per-sample forward."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rpo_train.model.policy import PolicySample, build_batch, forward_loss, sequence_logprobs
from rpo_train.model.prefix_forward import pack_groups, prefix_once_logprobs
from rpo_train.objectives import ObjectiveConfig
from tests.helpers.rollout_models import make_checkpoint, ragged_samples


@pytest.fixture(scope="module", params=["qwen2", "llama", "qwen3"])
def model(request, tmp_path_factory):
    from tests.helpers.rollout_models import hf_model

    return hf_model(make_checkpoint(tmp_path_factory.mktemp(request.param), request.param))


def close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5, atol: float = 1e-7) -> bool:
    return float((got - want).abs().max()) <= rel * float(want.abs().max()) + atol


@pytest.mark.parametrize("loss_tokens", ["full", "suffix"])
def test_packing_matches_the_padded_batch(loss_tokens):
    samples = ragged_samples()
    plain, packed = build_batch(samples, 0, loss_tokens), build_batch(samples, 0, loss_tokens, "prefix_once")
    assert torch.equal(plain.loss_mask, packed.loss_mask)
    assert torch.equal(plain.targets[plain.loss_mask], packed.row_targets[packed.token_rows])
    # each group's context is packed once: 4 contexts, not 12
    assert packed.num_context_rows == sum(p + x for p, x in ((5, 9), (3, 0), (8, 17), (1, 4)))
    assert len(packed.context_indptr) == 5 and packed.group_indptr == (0, 3, 6, 9, 12)
    if loss_tokens == "full":  # the prefix tokens' log-probs are taken once per group
        assert packed.row_hidden.numel() < int(plain.loss_mask.sum())
    with pytest.raises(ValueError, match="forward"):
        build_batch(samples, 0, loss_tokens, "twice")


@pytest.mark.parametrize("loss_tokens", ["full", "suffix"])
def test_logprobs_equal_plain_forward(model, loss_tokens):
    samples = ragged_samples(1)
    want = sequence_logprobs(model, build_batch(samples, 0, loss_tokens))
    got = sequence_logprobs(model, build_batch(samples, 0, loss_tokens, "prefix_once"))
    assert got.shape == want.shape and close(got, want)


def loss_and_grads(model, batch, adv, objective, old, ref, **kw):
    model.zero_grad(set_to_none=True)
    loss, metrics = forward_loss(model, batch, adv, objective, old_logprobs=old, ref_logprobs=ref, **kw)
    loss.backward()
    return loss.detach(), metrics, {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                    for n, p in model.named_parameters()}


@pytest.mark.parametrize("algorithm,loss_tokens", [("grpo", "full"), ("grpo", "suffix"), ("dapo", "full"),
                                                   ("dapo", "suffix")])
def test_loss_and_every_gradient_equal_plain_forward(model, algorithm, loss_tokens):
    samples = ragged_samples(2)
    objective = ObjectiveConfig.preset(algorithm, loss_tokens=loss_tokens, beta=0.04)
    plain = build_batch(samples, 0, loss_tokens)
    packed = build_batch(samples, 0, loss_tokens, "prefix_once")
    gen = torch.Generator().manual_seed(3)
    adv = torch.randn(len(samples), generator=gen)
    base = sequence_logprobs(model, plain)
    old = base + 0.1 * torch.randn(base.shape, generator=gen) * plain.loss_mask  # mu > 1: ratios off 1, some clip
    ref = base - 0.05 * plain.loss_mask
    want, want_m, want_g = loss_and_grads(model, plain, adv, objective, old, ref, max_response_len=40)
    got, got_m, got_g = loss_and_grads(model, packed, adv, objective, old, ref, max_response_len=40)
    assert float(got_m["clip_frac"]) > 0  # the clipped branch is exercised
    assert close(got, want)
    for key in ("clip_frac", "ratio_mean", "kl_mean", "entropy_mean", "active_tokens"):
        assert close(got_m[key], want_m[key]), key
    for name, g in want_g.items():
        assert close(got_g[name], g), f"gradient of {name}"


def test_kernel_and_sdpa_attention_agree(model):
    """The suffix attention through rpo_kernels' extend form (the GPU default) equals the masked-SDPA one."""
    samples = ragged_samples(6)
    packed = build_batch(samples, 0, "full", "prefix_once")
    weights = torch.randn(packed.loss_mask.shape, generator=torch.Generator().manual_seed(0))
    out = {}
    for attention in ("sdpa", "kernel"):
        model.zero_grad(set_to_none=True)
        logp = prefix_once_logprobs(model, packed, attention=attention)
        (logp * weights).sum().backward()
        out[attention] = (logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert close(out["kernel"][0], out["sdpa"][0])
    for name, g in out["sdpa"][1].items():
        assert close(out["kernel"][1][name], g), name
    with pytest.raises(ValueError, match="attention"):
        prefix_once_logprobs(model, packed, attention="flash")


@pytest.mark.parametrize("reentrant", [False, True])
def test_layer_checkpointing_gives_the_same_gradients(model, reentrant):
    """The model's own gradient checkpointing: its recomputation gets the same packing plan from the kwargs."""
    samples = ragged_samples(4)
    packed = build_batch(samples, 0, "full", "prefix_once")
    objective = ObjectiveConfig.preset("dapo")
    adv = torch.linspace(-1, 1, len(samples))
    m = copy.deepcopy(model).train()
    _, _, plain_g = loss_and_grads(m, packed, adv, objective, None, None)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        m.enable_input_require_grads()
    _, _, ckpt_g = loss_and_grads(m, packed, adv, objective, None, None)
    for name, g in plain_g.items():
        assert close(ckpt_g[name], g), name


def test_nothing_to_score_gives_zero_loss_and_gradients(model):
    samples = [PolicySample([3, 4], [7], []), PolicySample([3, 4], [7], [])]
    packed = pack_groups(samples, "suffix")
    loss, _, grads = loss_and_grads(model, packed, torch.ones(2), ObjectiveConfig.preset("grpo", beta=0.0), None,
                                   None)
    assert float(loss) == 0.0 and all(float(g.abs().max()) == 0.0 for g in grads.values())


@pytest.mark.parametrize("attention", ["sdpa", "kernel"])
def test_attention_runs_in_the_autocast_dtype(model, attention, monkeypatch):
    """fp32 weights under bf16 autocast (the GPU recipes' fp32 master weights): q, k and v reach attention in bf16,
    as torch SDPA gets them in the plain forward, and the log-probs stay close to the plain forward's."""
    import rpo_kernels
    seen = []
    real_sdpa, real_kernel = torch.nn.functional.scaled_dot_product_attention, rpo_kernels.shared_prefix_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda q, k, v, *a, **kw:
                        seen.append((q.dtype, k.dtype, v.dtype)) or real_sdpa(q, k, v, *a, **kw))
    monkeypatch.setattr(rpo_kernels, "shared_prefix_attention", lambda q, pk, pv, sk, sv, *a, **kw:
                        seen.append((q.dtype, pk.dtype, sv.dtype)) or real_kernel(q, pk, pv, sk, sv, *a, **kw))
    samples = ragged_samples(4)
    batch = build_batch(samples, 0, "full", "prefix_once")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = prefix_once_logprobs(model, batch, attention=attention)
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen), seen
    exact = sequence_logprobs(model, build_batch(samples, 0, "full"))
    mask = batch.loss_mask
    assert float((mixed[mask] - exact[mask]).detach().abs().max()) < 0.1  # bf16 activations, fp32 weights


def _layer_syncs(tmp_path, layers: int, backend: str, monkeypatch) -> tuple[int, list[int], set[int]]:
    """Host syncs of one kernel-mode prefix-once forward + backward with checkpointed layers: (all of them, those
    inside each attention call, ids of the plans the calls got)."""
    import rpo_kernels
    from rpo_kernels.ops.shared_prefix_attention import shared_prefix_attention
    from tests.helpers.host_syncs import HostSyncs
    from tests.helpers.rollout_models import hf_model

    model = hf_model(make_checkpoint(tmp_path / f"l{layers}", "qwen2", num_hidden_layers=layers)).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    packed = pack_groups(ragged_samples(2, group_size=2))
    real, inside, plans = shared_prefix_attention, [], set()

    def counted(*args, **kw):
        before = syncs.count
        plans.add(id(args[5]))
        out = real(*args, **dict(kw, backend=backend))
        inside.append(syncs.count - before)
        return out

    monkeypatch.setattr(rpo_kernels, "shared_prefix_attention", counted)
    with HostSyncs() as syncs:
        prefix_once_logprobs(model, packed, attention="kernel").sum().backward()
    return syncs.count, inside, plans


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_kernel_forward_has_no_host_sync_in_the_layer_loop(tmp_path, backend, monkeypatch):
    """Planned once from host ints: the attention calls of every layer, forward and checkpoint recomputation, reuse
    one plan with no host sync, so the syncs of a forward + backward do not grow with the number of layers."""
    one, inside_one, plans_one = _layer_syncs(tmp_path, 1, backend, monkeypatch)
    three, inside_three, plans_three = _layer_syncs(tmp_path, 3, backend, monkeypatch)
    assert len(inside_one) == 2 and len(inside_three) == 6  # forward + recomputation per layer
    assert inside_one == [0] * 2 and inside_three == [0] * 6
    assert len(plans_one) == len(plans_three) == 1
    assert three == one


@pytest.mark.gpu
def test_kernel_layers_do_not_synchronise_on_gpu(model, monkeypatch):
    """CUDA's sync debug mode raises on any host synchronisation inside the decoder layers (forward and checkpoint
    recomputation) or in their backward."""
    from rpo_train.model.prefix_forward import packed_hidden

    def strict(fn):
        def run(*args, **kw):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(*args, **kw)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return run

    m = copy.deepcopy(model).to("cuda", torch.bfloat16).train()
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    packed = pack_groups(ragged_samples(5, group_size=4)).to("cuda")
    for layer in m.model.layers:
        monkeypatch.setattr(layer, "forward", strict(layer.forward))
    torch.cuda.synchronize()
    hidden = packed_hidden(m, packed, attention="kernel")
    params = [p for n, p in m.named_parameters() if ".layers." in n]
    grads = strict(torch.autograd.grad)(hidden.float().square().sum(), params)
    assert all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.gpu
def test_prefix_once_on_gpu_bf16_within_the_rule(model):
    """bf16 on a GPU (Triton attention forward + backward): gradients within 2x plain bf16's error vs fp32."""
    from tests.helpers.rules import assert_within_rule

    samples = ragged_samples(5, group_size=4)
    objective = ObjectiveConfig.preset("dapo")
    adv = torch.linspace(-1, 1, len(samples)).cuda()
    exact = {}
    for dtype, forward in ((torch.float32, "plain"), (torch.bfloat16, "plain"), (torch.bfloat16, "prefix_once")):
        m = copy.deepcopy(model).to("cuda", dtype)
        batch = build_batch(samples, 0, "full", forward).to("cuda")
        exact[(dtype, forward)] = loss_and_grads(m, batch, adv, objective, None, None)[2]
    ref = exact[(torch.float32, "plain")]
    for name, g in ref.items():
        assert_within_rule(exact[(torch.bfloat16, "prefix_once")][name].float(), g,
                           exact[(torch.bfloat16, "plain")][name].float(), atol=1e-3, name=name)


def test_trainer_step_with_prefix_once_equals_plain(tmp_path):
    """One RPO step of the trainer: the same weights with either forward; ``auto`` picks prefix-once for RPO."""
    import dataclasses

    from rpo_train.task.tokenizer import make_tiny_checkpoint
    from rpo_train.trainer import Trainer
    from tests.helpers.train_configs import config, ones_reward

    ckpt = make_tiny_checkpoint(tmp_path / "tiny", hidden=32, max_positions=96)
    weights = {}
    for forward in ("auto", "plain"):
        cfg = config(ckpt, tmp_path / forward, steps=1)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, policy_forward=forward))
        trainer = Trainer(cfg, reward_fn=ones_reward)
        assert trainer.policy_forward == ("prefix_once" if forward == "auto" else "plain")
        trainer.train()
        weights[forward] = trainer.model.state_dict()
    from tests.helpers.rollout_models import hf_model

    start = hf_model(ckpt).state_dict()
    assert any(not torch.equal(start[n], w) for n, w in weights["plain"].items())  # the step did train
    losses = [json.loads((tmp_path / f / "metrics.jsonl").read_text().splitlines()[1])["train/loss"]
              for f in ("auto", "plain")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-8)
    # Adam's first update is lr * g / (|g| + eps): entries whose gradient is near rounding level move by up to lr in
    # either forward, so the weights agree to a small share of the step rather than to 1e-5.
    for name, w in weights["plain"].items():
        step = float((w - start[name]).abs().max())
        assert float((weights["auto"][name] - w).abs().max()) <= 5e-3 * step + 1e-7, name


def test_bench_policy_forward_runs_and_records(tmp_path):
    from benchmarks.bench_policy_forward import main
    from benchmarks.rows import read_rows

    out = tmp_path / "pf.csv"
    main(["--device", "cpu", "--shapes", "24,6,3", "--rep", "1", "--out", str(out), "--no-plot"])
    rows = read_rows(out)
    assert {r["provider"] for r in rows} == {"plain", "prefix_once"}
    assert all(float(r["value"]) >= 0 for r in rows if r["metric"] == "time_ms_median")


def test_sdpa_batches_of_groups_give_the_same_result(model, monkeypatch):
    """The CPU attention takes groups in padded batches within a mask budget: one group per batch or all groups in
    one batch give the same log-probs."""
    from rpo_train.model.shared_attention import PackedAttention

    packed = build_batch(ragged_samples(7), 0, "full", "prefix_once")
    together = prefix_once_logprobs(model, packed, attention="sdpa")
    monkeypatch.setattr(PackedAttention, "MASK_ELEMENTS", 1)
    plan = PackedAttention(packed.context_indptr, packed.suffix_indptr, packed.group_indptr, "cpu", "sdpa")
    assert len(plan.batches) == len(packed.context_indptr) - 1
    alone = prefix_once_logprobs(model, packed, attention="sdpa")
    assert close(alone, together)


def test_rpo_train_trains_a_model_its_engine_does_not_run(tmp_path):
    """A Mistral checkpoint (not a family of the native engine): with ``rollout.engine: hf`` rpo-train's RPO step runs
    the prefix-once forward through the model's own layers and trains; the native engine refuses it by name."""
    from rpo_train.rollout import NativeEngine
    from rpo_train.task.tokenizer import make_tiny_checkpoint
    from rpo_train.trainer import Trainer
    from tests.helpers.train_configs import config, ones_reward

    ckpt = make_tiny_checkpoint(tmp_path / "mistral", hidden=32, max_positions=96, arch="mistral")
    trainer = Trainer(config(ckpt, tmp_path / "run", steps=2, engine="hf"), reward_fn=ones_reward)
    assert trainer.policy_forward == "prefix_once" and type(trainer.model).__name__ == "MistralForCausalLM"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    with pytest.raises(ValueError, match="model_type='mistral'.*rollout.engine hf"):
        NativeEngine.from_pretrained(ckpt)
