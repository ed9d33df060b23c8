"""Next-token sampling: greedy, temperature, top-k, top-p; seeded per sequence; log-probs of the law actually used.

Each sequence owns a noise stream seeded from (call seed, prompt index, sample index), so a seeded run gives
the same tokens whatever the batching, the KV budget or the order in which groups were admitted.
"""

from __future__ import annotations

import torch

from ..seeding import derive_seed
from .config import SamplingConfig


class NoiseStream:
    """Exp(1) noise of one sequence, one [V] row per sampled token, drawn on the CPU in blocks of rows.

    Seeded from (call seed, prompt index, sample index); blocks of ``BLOCK_ROWS`` rows, so the row stream depends on
    the seed and V only (not on batching or budgets). CPU draws make a seeded run give the same tokens on any device.
    """

    BLOCK_ROWS = 16

    def __init__(self, seed: int, group: int, sample: int, vocab_size: int):
        self.generator = torch.Generator()
        self.generator.manual_seed(derive_seed(seed, group, sample))
        self.vocab_size = vocab_size
        self.block = torch.empty(0, vocab_size)
        self.next_row = 0

    def next(self) -> torch.Tensor:
        """The next [V] fp32 row of Exp(1) noise."""
        if self.next_row == self.block.shape[0]:
            self.block = torch.empty(self.BLOCK_ROWS, self.vocab_size).exponential_(generator=self.generator)
            self.next_row = 0
        self.next_row += 1
        return self.block[self.next_row - 1]


def processed_logprobs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Log-probabilities of the sampling distribution.

    Args:
        logits: [N, V] any float dtype (raw model logits of the next token).
        cfg: temperature, top_k, top_p (see ``SamplingConfig``).

    Returns:
        [N, V] fp32: ``log_softmax(logits / T)`` restricted to the top-k then top-p set (excluded tokens -inf, the
        rest renormalised). Greedy (T = 0): ``log_softmax(logits)``, the model's own distribution.
    """
    x = logits.float()
    if cfg.greedy:
        return torch.log_softmax(x, dim=-1)
    x = x / cfg.temperature
    if 0 < cfg.top_k < x.shape[-1]:
        kth = torch.topk(x, cfg.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass of the strictly more likely tokens
        drop_sorted = before >= cfg.top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.log_softmax(x, dim=-1)


def sample(logprobs: torch.Tensor, streams: list[NoiseStream] | None) -> torch.Tensor:
    """Draw one token per row.

    Args:
        logprobs: [N, V] fp32 from ``processed_logprobs``.
        streams: one ``NoiseStream`` per row, or None for greedy (argmax).

    Returns:
        [N] int64 token ids on logprobs' device. Sampling is ``argmax(p / E)`` with E ~ Exp(1) per token (an exact
        draw from p; tokens with p = 0 are never chosen).
    """
    if streams is None:
        return logprobs.argmax(dim=-1)
    if len(streams) != logprobs.shape[0]:
        raise ValueError(f"sample: {len(streams)} noise streams for {logprobs.shape[0]} rows")
    noise = torch.stack([s.next() for s in streams]).to(logprobs.device)
    return (logprobs.exp() / noise).argmax(dim=-1)
