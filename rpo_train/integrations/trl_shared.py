"""The shared-prefix training forward inside TRL: ``SharedForwardMixin`` overrides ``GRPOTrainer.
_get_per_token_logps_and_entropies``, the one seam every TRL log-prob goes through (the policy's in the loss, the old
and the reference log-probs), and ``SharedPrefixGRPOTrainer`` is plain GRPO with it.

TRL's batch is [prompt ; completion] per row. Rows with the same prompt tokens form a group; its shared context is
the prompt + the longest common start of the group's (non-empty) completions: under RPO that is the prompt + the
kept prefix, under plain GRPO the prompt. The rows are packed ``[each context once ; each row's rest]`` and run
through the model's own forward (``rpo_train.model.shared_rows``: a PEFT/LoRA wrapper, gradient checkpointing,
autocast and DDP do their part), with the result in TRL's [B, logits_to_keep] layout.

Guards: the first call compares the packed log-probs with TRL's per-row forward (``TOLERANCE`` by dtype, all
processes agreeing); on a mismatch or an error the trainer keeps the per-row path with one warning. A batch whose
token reuse (per-row tokens / packed tokens) is below ``shared_forward_min_reuse`` runs the per-row path too.
Multimodal inputs and MoE aux losses always do. Logged: ``rpo/shared_forward`` (share of calls packed) and
``rpo/token_reuse``.
"""

from __future__ import annotations

import warnings

import torch

from ..model.decoder import attention_dtype
from ..model.shared_rows import pack_rows, packed_logps, split_rows
from .trl_config import GRPOTrainer, SharedPrefixGRPOConfig, gather_object
from .trl_prefill import shared_prefill

# Mean |packed - per-row| log-prob over the completion tokens the first batch may show, by compute dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

__all__ = ["SharedForwardMixin", "SharedPrefixGRPOConfig", "SharedPrefixGRPOTrainer"]


def group_shuffle(batch: dict) -> dict:
    """TRL's ``shuffle_sequence_dict`` by group: the rows of a generation batch in a random order of their groups
    (rows with the same prompt ids), a group's rows kept together. TRL then splits the batch into
    ``steps_per_generation`` micro-batches, which so keep whole groups and share their contexts."""
    _, group = torch.unique(batch["prompt_ids"].cpu(), dim=0, return_inverse=True)
    rank = torch.randperm(int(group.max()) + 1)[group]  # each group's place, drawn as TRL draws its permutation
    permutation = torch.argsort(rank * len(group) + torch.arange(len(group)))

    def permute(v):
        if v is None or (isinstance(v, torch.Tensor) and v.ndim == 0):
            return v
        if isinstance(v, torch.Tensor):
            return v[permutation.to(v.device)]
        return [v[i] for i in permutation.tolist()]

    return {key: permute(value) for key, value in batch.items()}


class SharedForwardMixin:
    """Put before ``GRPOTrainer`` in the bases; reads ``args.shared_forward`` and ``args.shared_forward_min_reuse``.

    With transformers' generation (not vLLM), rows with the same input (a group's prompt, + prefix under RPO) are
    prefilled once (``rpo_train.integrations.trl_prefill``).

    With the shared forward on, a generation batch split over ``steps_per_generation`` micro-batches (gradient
    accumulation) is shuffled by group (``group_shuffle``) instead of by row, so that each micro-batch holds whole
    groups: shuffled by row, a group of G rows would be spread over the micro-batches with nothing left to share.
    """

    _shared_state: str = "unchecked"  # unchecked -> on | off

    def _generate_single_turn(self, *args, **kwargs):
        """TRL's generation; with transformers' ``generate``, each distinct prompt (+ prefix) prefilled once
        (``rpo_train.integrations.trl_prefill``)."""
        if self.use_vllm or not self.args.shared_forward:
            return super()._generate_single_turn(*args, **kwargs)
        with shared_prefill(self.accelerator.unwrap_model(self.model_wrapped)):
            return super()._generate_single_turn(*args, **kwargs)

    def _prepare_inputs(self, generation_batch):
        from trl.trainer import grpo_trainer

        if not self.args.shared_forward or self._shared_state == "off" or self.args.steps_per_generation == 1:
            return super()._prepare_inputs(generation_batch)  # one micro-batch: TRL's own row shuffle
        by_row, grpo_trainer.shuffle_sequence_dict = grpo_trainer.shuffle_sequence_dict, group_shuffle
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            grpo_trainer.shuffle_sequence_dict = by_row

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        def per_row():
            return super(SharedForwardMixin, self)._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)

        if (not self.args.shared_forward or self._shared_state == "off" or compute_aux_loss
                or any(v is not None for v in extra.values())):
            return per_row()
        mode = "train" if self.model.training else "eval"
        size = batch_size or input_ids.shape[0]
        parts, reuses = [], []
        for lo in range(0, input_ids.shape[0], size):
            rows = split_rows(input_ids[lo:lo + size], attention_mask[lo:lo + size], logits_to_keep)
            packed = pack_rows(rows) if rows is not None else (None, [], 1.0)
            parts.append((rows, *packed))
            reuses.append(packed[2] if packed[0] is not None else 1.0)
        reuse = sum(reuses) / len(reuses)
        self._metrics[mode]["rpo/token_reuse"].append(reuse)
        usable = all(p[1] is not None for p in parts) and reuse >= self.args.shared_forward_min_reuse
        if self._shared_state == "unchecked":
            return self._shared_first_call(model, parts, logits_to_keep, compute_entropy, per_row, mode, usable)
        if not usable:
            self._metrics[mode]["rpo/shared_forward"].append(0.0)
            return per_row()
        self._metrics[mode]["rpo/shared_forward"].append(1.0)
        return (*self._shared_logps(model, parts, logits_to_keep, compute_entropy), None)

    def _shared_logps(self, model, parts, logits_to_keep: int, compute_entropy: bool):
        """(log-probs [B, K], entropies [B, K] or None) of the packed chunks ``parts``, in TRL's row order."""
        core = self.accelerator.unwrap_model(model)
        head_fp32 = bool(getattr(self.args, "cast_lm_head_to_fp32", False))
        logps, entropies = [], []
        for rows, packed, kept, _ in parts:
            with self.accelerator.autocast():
                lp, ent = packed_logps(model, rows, packed.to(self.accelerator.device), kept, logits_to_keep,
                                       temperature=self.temperature, core=core, head_fp32=head_fp32)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None)

    def _shared_first_call(self, model, parts, logits_to_keep, compute_entropy, per_row, mode, usable):
        """The self-check: packed vs per-row log-probs on this batch, agreed over processes; then the packed result
        (if usable) or the per-row one. A batch with a chunk that has nothing to score (every completion masked, as
        ``mask_truncated_completions`` leaves truncated rows) decides nothing: the check waits for the next one."""
        reason = "" if all(p[0] is not None for p in parts) else "a completion mask is not a run from its start"
        empty = not reason and any(p[1] is None for p in parts)
        got = None
        if not reason and not empty:
            try:
                got = self._shared_logps(model, parts, logits_to_keep, compute_entropy)
            except (NotImplementedError, ValueError, RuntimeError) as exc:
                reason = f"the packed forward failed: {exc}"
        with torch.no_grad():
            want = per_row()
        if got is not None:
            mask = torch.cat([(torch.arange(logits_to_keep)[None, :] < torch.tensor([len(c) for _, c in rows])[:, None])
                              for rows, *_ in parts]).to(want[0].device)
            diff = (got[0].detach().float() - want[0].float()).abs()[mask]
            error = float(diff.mean()) if diff.numel() else 0.0
            with self.accelerator.autocast():
                dtype = attention_dtype(next(model.parameters()))  # autocast's when on, else the weights'
            tol = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
            if not error <= tol:
                reason = f"its log-probs differ from the per-row forward's by {error:.3g} on average (> {tol:g}, " \
                         f"{dtype})"
        statuses = gather_object([(reason, empty)])
        reasons = [r for r, _ in statuses if r]
        if reasons or not any(e for _, e in statuses):
            self._shared_state = "off" if reasons else "on"
        if reasons:
            warnings.warn(f"shared_forward is off for this run: {reasons[0]}; TRL's per-row forward is used",
                          stacklevel=3)
        if reasons or not usable or self._shared_state == "unchecked":
            self._metrics[mode]["rpo/shared_forward"].append(0.0)
            return per_row() if torch.is_grad_enabled() else want
        self._metrics[mode]["rpo/shared_forward"].append(1.0)
        return (*got, None)


class SharedPrefixGRPOTrainer(SharedForwardMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer`` whose training forward runs each group's prompt once (``args``: a
    ``SharedPrefixGRPOConfig``; its other arguments are ``GRPOTrainer``'s)."""

    def __init__(self, *args, **kwargs):
        given = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(given, SharedPrefixGRPOConfig):
            raise TypeError(f"SharedPrefixGRPOTrainer: args must be a SharedPrefixGRPOConfig, got "
                            f"{type(given).__name__}")
        super().__init__(*args, **kwargs)
