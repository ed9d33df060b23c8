"""The host-sync counter of tests/helpers/host_syncs.py catches what it claims, and a planned
``shared_prefix_attention`` call (forward and backward, reference and Triton) has none."""

from __future__ import annotations

import pytest
import torch

import rpo_kernels
from tests.helpers.attention_cases import DIFF_NAMES, attend, make_case, plan_of
from tests.helpers.host_syncs import HostSyncs

SYNCING = {
    "tolist": lambda x: x.tolist(),
    "item": lambda x: x[0].item(),
    "int": lambda x: int(x.max()),
    "if": lambda x: 1 if x.any() else 0,
    "numpy": lambda x: x.numpy(),
    "nonzero": lambda x: x.nonzero(),
    "bool mask": lambda x: x[x > 2],
    "unique": lambda x: x.unique(),
    "repeat_interleave": lambda x: torch.repeat_interleave(x),
}


def test_cpu_tolist_dispatches_no_aten_op():
    """Why the counter wraps ``Tensor.tolist``: on a CPU tensor it reads memory without an aten op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen, x = [], torch.arange(5)

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Log():
        x.tolist()
    assert seen == []


@pytest.mark.parametrize("name", SYNCING)
def test_counts_each_sync(name):
    x = torch.arange(5)
    with HostSyncs() as syncs:
        SYNCING[name](x)
    assert syncs.count == 1, syncs.events
    assert x.tolist() == [0, 1, 2, 3, 4]  # the wrapper is gone after the block


def test_ignores_device_side_work():
    x = torch.randn(7, 5, requires_grad=True)
    with HostSyncs() as syncs:
        y = torch.softmax(x @ x.T, -1).masked_fill(torch.eye(7, dtype=torch.bool), 0.0)
        y = y.index_select(0, torch.arange(3)).repeat_interleave(2, dim=0)
        y.sum().backward()
    assert syncs.count == 0, syncs.events


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_planned_calls_do_not_sync(backend):
    """Given a plan, forward and backward of ``shared_prefix_attention`` have no host sync, call after call."""
    case = make_case([3, 1], [37, 0], 4, 2, 16, extend=True, max_q=4, seed=2)
    plan = plan_of(case)
    leaves = {n: case[n].clone().requires_grad_() for n in DIFF_NAMES}
    attend(case, backend, plan=plan, tensors=leaves)  # first use builds and caches the backend's tables
    with HostSyncs() as syncs:
        for _ in range(2):
            out, lse = attend(case, backend, plan=plan, tensors=leaves, return_lse=True)
            (out.sum() + lse.sum()).backward()
    assert syncs.count == 0, syncs.events
    assert isinstance(plan, rpo_kernels.SharedPrefixPlan)
