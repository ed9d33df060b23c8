"""vLLM worker extension used by ``VLLMEngine`` (``worker_extension_cls``): receives weights pushed by the trainer.

vLLM mixes this class into its workers; ``LLM.collective_rpc("rpo_load_weights", args=(packed,))`` runs the method
in every worker. Tensors travel as plain (name, dtype, shape, bytes) tuples, which vLLM's msgpack channel carries
as they are (no pickle). Imports nothing from vLLM.
"""

from __future__ import annotations

import torch

Packed = list[tuple[str, str, list[int], bytes]]


def pack_state_dict(state_dict) -> Packed:
    """(name, dtype name, shape, raw bytes) per tensor, on the CPU."""
    out = []
    for name, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        out.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), raw))
    return out


def unpack(packed: Packed):
    """Inverse of ``pack_state_dict``: yields (name, tensor)."""
    for name, dtype, shape, raw in packed:
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        yield name, flat.view(getattr(torch, dtype)).reshape(shape)


class WeightSync:
    """Mixed into vLLM's worker class; ``self.model_runner`` is the worker's."""

    def rpo_load_weights(self, packed: Packed) -> int:
        """Load HF-named weights from ``pack_state_dict`` output into the served model; returns how many.

        Newer vLLM releases post-process weights after loading (e.g. repacked CPU linear layers) and offer
        ``model_runner.reload_weights`` for in-place updates; older ones load through ``model.load_weights``.
        """
        runner = self.model_runner
        if hasattr(runner, "reload_weights"):
            runner.reload_weights(weights_iterator=unpack(packed))
        else:
            runner.model.load_weights(weights=unpack(packed))
        return len(packed)
