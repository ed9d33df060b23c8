"""Shared-prefix attention inside any Hugging Face causal LM, through transformers' ``AttentionInterface``.

``enable(model)`` registers, once per base implementation (``sdpa``, ``flash_attention_2``, ...), an attention
function named ``<base>+rpo_shared_prefix`` and switches the model to it. Called without a plan the function is the
base implementation itself (its own mask function is registered under the new name too), so generation, evaluation
and any per-row forward are unchanged. Called with ``rpo_packing=PackedAttention(...)`` among the forward's kwargs
(transformers hands a forward's extra kwargs to every layer's attention, and gradient checkpointing's recomputation
keeps them), the batch is one packed row ``[contexts ; suffixes]``:
- each context (a group's prompt + shared prefix) attends causally to itself;
- each suffix attends to its group's context K/V (one copy) and causally to its own rows, at positions that continue
  the context's (the caller's ``position_ids``).
The suffix attention is ``rpo_kernels.shared_prefix_attention`` (``kernel``: all groups in one call, one plan for every
layer; Triton forward and backward on a GPU) or one masked torch SDPA per group over [context ; the group's suffixes]
(``sdpa``: fastest on a CPU, where the kernel's reference runs eagerly). Either way a group's context exists once, and
gradients from all its suffixes flow into it. Nothing else of the model is touched: a PEFT/LoRA wrapper, gradient
checkpointing, autocast, a DDP/FSDP wrapper all do their part as in the per-row forward.
"""

from __future__ import annotations

import torch

import rpo_kernels

from .decoder import attention_dtype

KWARG = "rpo_packing"
SUFFIX = "+rpo_shared_prefix"
ATTENTIONS = ("auto", "kernel", "sdpa")
# attention kwargs that change the math in a way the packed path does not implement
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "sliding_window")


def _sdpa(q, k, v, scale: float, *, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """torch SDPA on packed rows: q [M, Hq, D], k/v [L, Hkv, D] -> [M, Hq, D] (GQA by head groups)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask, is_causal=causal,
        scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)


def _batches(cost: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of groups whose padded masks (``cost`` elements per group, padded to the run's largest)
    stay within ``budget`` elements; a group alone always fits."""
    out: list[list[int]] = []
    for c, size in enumerate(cost):
        run = out[-1] if out else None
        if run is not None and (len(run) + 1) * max(size, *(cost[i] for i in run)) <= budget:
            run.append(c)
        else:
            out.append([c])
    return out


def _padded(rows: list[list[int]], width: int) -> torch.Tensor:
    """[n, width] gather index of ``rows`` (each padded with its first row, or row 0; padded outputs are dropped)."""
    index = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        index[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        index[b, len(r):] = r[0] if r else 0
    return index


class PackedAttention:
    """The attention plan of one packed forward, made once from host ints and used by every layer.

    context_indptr [C+1]: group c's context rows; group_indptr [C+1]: its suffixes; suffix_indptr [N+1]: suffix i's
    rows, counted from the first suffix row ``num_context_rows`` (suffixes of one group adjacent, groups in order).
    mode: "kernel" | "sdpa" | "auto" (kernel on a CUDA device, else sdpa).

    ``sdpa`` takes the groups in batches (their masks within ``MASK_ELEMENTS``), two SDPA calls per batch: the
    contexts, right-padded into one batch, causal (a real row sees only real rows before it); the suffixes, padded
    likewise, as queries against [their context ; their group's suffixes] with a mask letting each see the whole
    context and its own suffix causally. One gather per operand and one for the outputs keep the backward to one
    index-add each (per-group slices would each add a full-size gradient).
    """

    MASK_ELEMENTS = 1 << 26

    def __init__(self, context_indptr, suffix_indptr, group_indptr, device: torch.device, mode: str = "auto"):
        if mode not in ATTENTIONS:
            raise ValueError(f"argument 'attention' must be one of {ATTENTIONS}, got {mode!r}")
        device = torch.device(device)
        self.mode = ("kernel" if device.type == "cuda" else "sdpa") if mode == "auto" else mode
        self.ctx, self.tc = tuple(context_indptr), context_indptr[-1]
        self.rows = self.tc + suffix_indptr[-1]
        suf, grp = suffix_indptr, group_indptr
        if self.mode == "kernel":  # every suffix token is a query
            self.plan = rpo_kernels.plan_shared_prefix(self.ctx, suf, grp, suf, device=device)
            return
        groups = range(len(self.ctx) - 1)
        contexts = [list(range(self.ctx[c], self.ctx[c + 1])) for c in groups]
        suffixes = [list(range(self.tc + suf[grp[c]], self.tc + suf[grp[c + 1]])) for c in groups]
        owners = [[j for j in range(grp[c], grp[c + 1]) for _ in range(suf[j + 1] - suf[j])] for c in groups]
        cost = [len(s) * (len(x) + len(s)) + len(x) for x, s in zip(contexts, suffixes)]
        self.batches = []  # (context index [n, Lc], suffix index [n, Ls] or None, keys index, mask) per batch
        inverse = [0] * self.rows
        offset = 0
        for run in _batches(cost, self.MASK_ELEMENTS):
            lc = max(len(contexts[c]) for c in run)
            ls = max(len(suffixes[c]) for c in run)
            ctx_index = _padded([contexts[c] for c in run], lc)
            for b, c in enumerate(run):
                for j, r in enumerate(contexts[c]):
                    inverse[r] = offset + b * lc + j
            offset += len(run) * lc
            if ls == 0:
                self.batches.append((ctx_index.to(device), None, None, None))
                continue
            suf_index = _padded([suffixes[c] or contexts[c] for c in run], ls)
            mask = torch.zeros(len(run), 1, ls, lc + ls, dtype=torch.bool)
            for b, c in enumerate(run):
                n, m = len(suffixes[c]), len(contexts[c])
                own = torch.tensor(owners[c], dtype=torch.long)
                row = torch.arange(n)
                mask[b, 0, :n, :m] = True
                mask[b, 0, :n, lc:lc + n] = (own[:, None] == own[None, :]) & (row[None, :] <= row[:, None])
                mask[b, 0, n:, 0] = True  # padding rows see one key (their output is dropped)
                for j, r in enumerate(suffixes[c]):
                    inverse[r] = offset + b * ls + j
            offset += len(run) * ls
            keys = torch.cat([ctx_index, suf_index], 1)
            self.batches.append((ctx_index.to(device), suf_index.to(device), keys.to(device), mask.to(device)))
        self.inverse = torch.tensor(inverse, dtype=torch.long, device=device)

    def __call__(self, q, k, v, scale: float) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] of the packed rows -> out [T, Hq, D]."""
        if q.shape[0] != self.rows:
            raise ValueError(f"packed attention: the plan has {self.rows} rows, the layer got {q.shape[0]}")
        tc = self.tc
        if self.mode == "kernel":
            out = [_sdpa(q[a:b], k[a:b], v[a:b], scale, causal=True) for a, b in zip(self.ctx[:-1], self.ctx[1:])]
            if q.shape[0] > tc:
                out.append(rpo_kernels.shared_prefix_attention(q[tc:], k[:tc], v[:tc], k[tc:], v[tc:], self.plan,
                                                               softmax_scale=scale))
            return torch.cat(out)

        def gather(x, index):  # [T, H, D] -> [n, H, L, D]
            return x.index_select(0, index.reshape(-1)).reshape(*index.shape, *x.shape[1:]).transpose(1, 2)

        outs = []
        sdpa = torch.nn.functional.scaled_dot_product_attention
        for ctx_index, suf_index, keys, mask in self.batches:
            o = sdpa(gather(q, ctx_index), gather(k, ctx_index), gather(v, ctx_index), is_causal=True, scale=scale,
                     enable_gqa=True)
            outs.append(o.transpose(1, 2).reshape(-1, *q.shape[1:]))
            if suf_index is not None:
                o = sdpa(gather(q, suf_index), gather(k, keys), gather(v, keys), attn_mask=mask, scale=scale,
                         enable_gqa=True)
                outs.append(o.transpose(1, 2).reshape(-1, *q.shape[1:]))
        return torch.cat(outs).index_select(0, self.inverse)


def _dispatching(base: str):
    """The attention function registered as ``base + SUFFIX``: packed with a plan, else ``base``'s own."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    registry = AttentionInterface()
    delegate = registry[base] if base in registry else sdpa_attention_forward  # eager: the same math as SDPA

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        packing = kwargs.pop(KWARG, None)
        if packing is None:
            return delegate(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        used = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
        if used or dropout:
            raise NotImplementedError(f"packed shared-prefix attention does not implement {used or ['dropout']} "
                                      f"({type(module).__name__})")
        if query.shape[0] != 1:
            raise ValueError(f"packed attention takes one packed row, got a batch of {query.shape[0]}")
        dtype = attention_dtype(query)
        q, k, v = (x[0].transpose(0, 1).to(dtype) for x in (query, key, value))
        scale = float(scaling) if scaling is not None else q.shape[-1] ** -0.5
        return packing(q, k, v, scale)[None], None

    return attention


def core_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside ``model`` (a PEFT wrapper's base model, or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def enable(model: torch.nn.Module) -> str:
    """Switch ``model`` (an HF causal LM or a PEFT wrapper of one, unwrapped from DDP) to the dispatching attention;
    idempotent. Returns the implementation's name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    core = core_model(model)
    base = core.config._attn_implementation or "sdpa"
    if base.endswith(SUFFIX):
        return base
    name = base + SUFFIX
    if name not in AttentionInterface():
        AttentionInterface.register(name, _dispatching(base))
        masks = ALL_MASK_ATTENTION_FUNCTIONS
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, masks[base] if base in masks and base != "eager" else masks["sdpa"])
    core.set_attn_implementation(name)
    return name
