"""FSDP2 for ``optim.parallel: fsdp``: the decoder layers' parameters, gradients and AdamW state are sharded over the
ranks (``torch.distributed.fsdp.fully_shard`` on every layer); the embedding, final norm and lm_head stay whole on
every rank, so the fused lm_head loss can use them outside a module's forward.

Gradients: the layers' are reduce-scattered by FSDP as sums (divide factor 1: the trainer's loss weights are already
global), the whole parameters' are all-reduced by ``DistContext.sum_gradients``. Every rank must run the same number
of forwards and backwards through the sharded layers (each one gathers parameters), so the trainer pads its
micro-batches to the same count on every rank. Both policy forwards go through the model's own forward, where FSDP
gathers each layer's parameters. Checkpoints hold full tensors in the usual
format: a run can resume with or without sharding, on any number of ranks.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def shard_layers(model, device_type: str) -> None:
    """Shard every decoder layer of an HF causal LM over all ranks (in place)."""
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (tdist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
        layer.set_gradient_divide_factor(1.0)
        layer.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no pre-multiplied sum


def is_sharded_tensor(value) -> bool:
    return isinstance(value, DTensor)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank calls it), or ``value`` itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state_dict(model, unique: bool = False) -> dict[str, torch.Tensor]:
    """Every entry of ``model.state_dict()`` as a whole tensor (every rank calls it, every rank gets it).

    ``unique``: a tensor shared by two names (a tied lm_head) appears once, under its ``named_parameters`` name, so
    the dict can be saved as safetensors.
    """
    sd = model.state_dict()
    if unique:
        names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        sd = {k: v for k, v in sd.items() if k in names}
    return {k: full_tensor(v) for k, v in sd.items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with sharded state tensors made whole (every rank calls it)."""
    sd = optimizer.state_dict()
    state = {idx: {k: full_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in st.items()}
             for idx, st in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def _like(param: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out like ``param`` (this rank's shard when ``param`` is sharded)."""
    whole = whole.to(param.device, param.dtype)
    if isinstance(param, DTensor):
        return distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
    return whole


@torch.no_grad()
def load_full_state(model, optimizer: torch.optim.Optimizer, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict) -> None:
    """Load whole tensors (a checkpoint) into a sharded model and its optimizer."""
    tied = {"lm_head.weight": "model.embed_tokens.weight", "model.embed_tokens.weight": "lm_head.weight"}
    for name, p in model.named_parameters():
        key = name if name in model_state else tied.get(name)
        if key not in model_state:
            raise ValueError(f"checkpoint has no tensor for parameter {name!r}")
        if tuple(model_state[key].shape) != tuple(p.shape):
            raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(model_state[key].shape)}, the model's "
                             f"{name!r} has {tuple(p.shape)}")
        p.copy_(_like(p, model_state[key]))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {idx: {k: _like(params[int(idx)], v) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                   for k, v in st.items()} for idx, st in optimizer_state["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": optimizer_state["param_groups"]})


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a mix of sharded and whole parameters: the global L2 norm (sharded
    gradients' squares summed over ranks, whole ones counted once), then every gradient scaled by
    ``min(1, max_norm / (norm + 1e-6))``."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    whole = [g for g in grads if not isinstance(g, DTensor)]
    dev = grads[0].device if grads else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for g in whole:
        total += g.detach().double().pow(2).sum()
    local = torch.zeros((), dtype=torch.float64, device=dev)
    for g in sharded:
        local += g.to_local().detach().double().pow(2).sum()
    if sharded:
        import torch.distributed as tdist

        tdist.all_reduce(local)
    norm = (total + local).sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype) if not isinstance(g, DTensor) else float(coef))
    return norm.float()
