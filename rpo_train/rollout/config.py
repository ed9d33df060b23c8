"""Validated configuration dataclasses of the rollout engines."""

from __future__ import annotations

from dataclasses import dataclass


def _positive_int(owner: str, name: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class NativeEngineConfig:
    """Knobs of ``NativeEngine``.

    kv_budget_tokens: KV memory in token slots (all layers); None = ``kv_budget_bytes`` worth. The engine keeps KV
        in lanes (``rpo_train.rollout.kv_lanes``) sized per call: one prefix lane per group in flight (capacity: the
        longest prompt + prefix) and one suffix lane per running sample (capacity: the largest budget - 1), as many
        as the budget holds, at most max_num_seqs each. Groups and samples wait for a free lane; a call whose longest
        prefix plus one sample cannot fit the budget is an error.
    max_num_seqs: sequences decoded together at most. max_prefill_tokens: prompt tokens prefilled in one forward (a
        longer single group is still prefilled alone). reuse_prefix_kv: keep a prefix's KV after its group finishes
        and reuse it for the same tokens under the SAME weights (never across a weight change). max_model_len:
        None = the checkpoint's max_position_embeddings. attention_backend: None (rpo_kernels' choice: the CUDA
        kernel on a GPU when the extension is built and the model is fp16/bf16 with head dim 64 or 128, else
        Triton; the reference on a CPU), "cuda", "triton" or "reference".
    """

    kv_budget_tokens: int | None = None
    kv_budget_bytes: int = 1 << 30
    max_num_seqs: int = 256
    max_prefill_tokens: int = 8192
    reuse_prefix_kv: bool = True
    max_model_len: int | None = None
    attention_backend: str | None = None

    def __post_init__(self):
        owner = "NativeEngineConfig"
        _positive_int(owner, "kv_budget_tokens", self.kv_budget_tokens, allow_none=True)
        for name in ("kv_budget_bytes", "max_num_seqs", "max_prefill_tokens"):
            _positive_int(owner, name, getattr(self, name))
        _positive_int(owner, "max_model_len", self.max_model_len, allow_none=True)
        if not isinstance(self.reuse_prefix_kv, bool):
            raise ValueError(f"{owner}.reuse_prefix_kv must be a bool, got {self.reuse_prefix_kv!r}")
        if self.attention_backend not in (None, "auto", "cuda", "triton", "reference"):
            raise ValueError(f"{owner}.attention_backend must be None, 'auto', 'cuda', 'triton' or 'reference', "
                             f"got {self.attention_backend!r}")
