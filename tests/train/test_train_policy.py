"""The trainer's policy forward: the fused loss on the HF model's hidden states equals the loss on its logits."""

from __future__ import annotations

import pytest
import torch

from rpo_kernels.reference import policy_loss_ref
from rpo_train.model.policy import PolicySample, build_batch, forward_loss, sequence_logprobs
from rpo_train.objectives import ObjectiveConfig


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).eval()


SAMPLES = [PolicySample([5, 6, 7], [8, 9, 10, 11], [12, 13]), PolicySample([5, 6], [], [20, 21, 22, 23, 24]),
           PolicySample([1, 2, 3, 4], [30], [31])]


def test_masks_cover_response_or_suffix():
    full = build_batch(SAMPLES, pad_id=0, loss_tokens="full")
    suffix = build_batch(SAMPLES, pad_id=0, loss_tokens="suffix")
    assert full.loss_mask.sum(1).tolist() == [6, 5, 2]
    assert suffix.loss_mask.sum(1).tolist() == [2, 5, 1]
    row = full.targets[0][full.loss_mask[0]].tolist()
    assert row == [8, 9, 10, 11, 12, 13]
    assert suffix.targets[0][suffix.loss_mask[0]].tolist() == [12, 13]
    with pytest.raises(ValueError, match="loss_tokens"):
        build_batch(SAMPLES, 0, "prefix")
    with pytest.raises(ValueError, match="prompt_ids"):
        PolicySample([], [1], [2])


@pytest.mark.parametrize("loss_tokens", ["full", "suffix"])
def test_fused_policy_loss_equals_logits_path(model, loss_tokens):
    batch = build_batch(SAMPLES, pad_id=0, loss_tokens=loss_tokens)
    objective = ObjectiveConfig.preset("grpo", loss_tokens=loss_tokens)
    adv = torch.tensor([1.0, -0.5, 0.3])
    old = sequence_logprobs(model, batch) + 0.05 * torch.randn(batch.targets.shape) * batch.loss_mask
    ref = sequence_logprobs(model, batch)
    model.zero_grad()
    loss, metrics = forward_loss(model, batch, adv, objective, old_logprobs=old, ref_logprobs=ref)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None]).squeeze(-1)
    want, _ = policy_loss_ref(logp, old, adv, batch.loss_mask, ref_logprobs=ref, loss_type="grpo", beta=0.04)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
    assert metrics["active_tokens"].item() == batch.loss_mask.sum().item()
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-6), name
