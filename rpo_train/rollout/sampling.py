"""Next-token sampling: greedy, temperature, top-k, top-p; seeded per sequence; log-probs of the law actually used.

Each sequence owns a stream of uniform draws seeded from (call seed, prompt index, sample index), so a seeded run
gives the same tokens whatever the batching, the KV budget or the order in which groups were admitted.
"""

from __future__ import annotations

import torch

from ..runtime.seeding import derive_seed
from .params import SamplingParams


class NoiseStream:
    """The U(0, 1) draws of one sequence, one per sampled token, taken from its own CPU generator in blocks.

    Seeded from (call seed, prompt index, sample index); blocks of ``BLOCK`` fp64 draws, so the stream depends on the
    seed only (not on batching, budgets or the vocabulary). CPU draws make a seeded run give the same tokens on any
    device, and one number per token keeps them cheap at any vocabulary size.
    """

    BLOCK = 64

    def __init__(self, seed: int, group: int, sample: int):
        self.generator = torch.Generator()
        self.generator.manual_seed(derive_seed(seed, group, sample))
        self.block: list[float] = []
        self.next_index = 0

    def next(self) -> float:
        """The next U(0, 1) draw."""
        if self.next_index == len(self.block):
            self.block = torch.rand(self.BLOCK, generator=self.generator, dtype=torch.float64).tolist()
            self.next_index = 0
        self.next_index += 1
        return self.block[self.next_index - 1]


def processed_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probabilities of the sampling distribution.

    Args:
        logits: [N, V] any float dtype (raw model logits of the next token).
        params: temperature, top_k, top_p (see ``SamplingParams``).

    Returns:
        [N, V] fp32: ``log_softmax(logits / T)`` restricted to the top-k then top-p set (excluded tokens -inf, the
        rest renormalised). Greedy (T = 0): ``log_softmax(logits)``, the model's own distribution.
    """
    x = logits.float()
    if params.greedy:
        return torch.log_softmax(x, dim=-1)
    x = x / params.temperature
    if 0 < params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass of the strictly more likely tokens
        drop_sorted = before >= params.top_p
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
        [N] int64 token ids on logprobs' device. Sampling is by the inverse CDF: with c = cumsum(p) summed in fp64
        and one u ~ U(0, 1) per row, the token is the first j with c_j > u * c_V (an exact draw from p; a token with
        p = 0 never has c_j > c_{j-1}, so it is never chosen).
    """
    if streams is None:
        return logprobs.argmax(dim=-1)
    if len(streams) != logprobs.shape[0]:
        raise ValueError(f"sample: {len(streams)} noise streams for {logprobs.shape[0]} rows")
    cdf = torch.cumsum(logprobs.exp(), dim=-1, dtype=torch.float64)
    total = cdf[:, -1:]
    u = torch.tensor([s.next() for s in streams], dtype=torch.float64).to(logprobs.device)[:, None]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
    return torch.searchsorted(cdf, x, right=True)[:, 0]
