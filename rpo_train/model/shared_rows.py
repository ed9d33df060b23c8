"""Padded [prompt ; completion] batches (TRL's layout) through the prefix-once forward.

``split_rows`` reads each row's prompt and completion tokens on the host; ``pack_rows`` groups the rows that share a
prompt, takes the prompt + the longest common start of the group's completions as the group's context (under RPO the
prompt + the kept prefix, under plain GRPO the prompt) and packs them (``rpo_train.model.prefix_forward``);
``packed_logps`` runs the packed forward and returns the log-probs and entropies in the batch's [B, K] layout. A
context token's log-prob is computed once and gathered into every row of its group, so its gradient is the sum over
the rows, exactly as the per-row forward counts it. No TRL import: RPOTrainer's seam
(``rpo_train.integrations.trl_shared``) and the tests use it alike.
"""

from __future__ import annotations

import torch

from .policy import PolicySample
from .prefix_forward import pack_groups, prefix_once_logprobs


def split_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int):
    """TRL's [B, P + K] batch as host (prompt ids, completion ids) per row: the prompt's attended tokens and the
    completion's first ``sum(mask)`` tokens. None when a completion's mask is not a run from its start (then the
    per-row forward must serve the batch)."""
    ids, mask = input_ids.detach().cpu(), attention_mask.detach().cpu().bool()
    p = ids.shape[1] - logits_to_keep
    lengths = mask[:, p:].sum(1)
    if not bool((mask[:, p:] == (torch.arange(logits_to_keep)[None, :] < lengths[:, None])).all()):
        return None
    rows, masks = ids.tolist(), mask[:, :p].tolist()
    return [([t for t, m in zip(row[:p], keep) if m], row[p:p + n])
            for row, keep, n in zip(rows, masks, lengths.tolist())]


def _common_start(completions: list[list[int]]) -> int:
    """Length of the longest common start of ``completions`` (non-empty lists)."""
    first = completions[0]
    n = min(len(c) for c in completions)
    for other in completions[1:]:
        if other[:n] != first[:n]:
            n = next(j for j in range(n) if other[j] != first[j])
    return n


def pack_rows(rows):
    """(packed groups, indices of the rows in it, token reuse) of ``split_rows``'s rows: rows with a prompt and a
    non-empty completion, grouped by prompt, each group's context = prompt + the longest common start of its
    completions. Token reuse = the per-row forward's tokens (every row's, padding aside) / the packed forward's."""
    kept = [i for i, (_, c) in enumerate(rows) if c]
    if not kept:
        return None, kept, 1.0
    groups: dict[tuple, list[int]] = {}
    for i in kept:
        groups.setdefault(tuple(rows[i][0]), []).append(i)
    start = {key: _common_start([rows[i][1] for i in members]) for key, members in groups.items()}
    samples = []
    for i in kept:
        prompt, completion = rows[i]
        n = start[tuple(prompt)]
        samples.append(PolicySample(prompt, completion[:n], completion[n:]))
    packed = pack_groups(samples, "full")
    per_row = sum(len(prompt) + len(completion) for prompt, completion in rows)  # TRL runs the empty rows too
    return packed, kept, per_row / packed.ids.numel()


def packed_logps(model, rows, packed, kept: list[int], logits_to_keep: int, *, temperature: float = 1.0,
                 core=None, head_fp32: bool = False):
    """(log-probs, entropies), each [B, K] fp32 and differentiable, of ``split_rows``'s rows in TRL's layout: entry
    (i, j) is completion token j of row i given its prompt and completion[:j] (zeros past the completion and for
    rows outside ``kept``), computed by one packed forward of ``packed`` (``pack_rows``, on the model's device)."""
    lp, ent = prefix_once_logprobs(model, packed, temperature=temperature, return_entropy=True, core=core,
                                   head_fp32=head_fp32)
    device = lp.device
    k = torch.arange(logits_to_keep)
    prompt = torch.tensor([len(rows[i][0]) for i in kept])
    length = torch.tensor([len(rows[i][1]) for i in kept])
    valid = (k[None, :] < length[:, None]).to(device)
    cols = (prompt[:, None] - 1 + k[None, :]).clamp(max=lp.shape[1] - 1).to(device)
    index = torch.tensor(kept, device=device)
    out = []
    for full in (lp, ent):
        got = full.gather(1, cols) * valid
        out.append(got.new_zeros(len(rows), logits_to_keep).index_copy(0, index, got))
    return out[0], out[1]
