"""The accuracy rule of the test suite.

A kernel's error against an fp32 (or fp64) reference may be at most twice the error that plain PyTorch makes at the
kernel's precision, plus a small absolute tolerance:  max|kernel - ref| <= 2 * max|torch_lowprec - ref| + atol.
"""

from __future__ import annotations

import torch


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def assert_within_rule(kernel: torch.Tensor, ref: torch.Tensor, torch_lowprec: torch.Tensor, *, atol: float,
                       name: str = "output") -> None:
    """Fail unless ``kernel`` is within 2x of ``torch_lowprec``'s error against ``ref`` (+ atol)."""
    if kernel.shape != ref.shape or torch_lowprec.shape != ref.shape:
        raise AssertionError(f"{name}: shapes differ: kernel {tuple(kernel.shape)}, ref {tuple(ref.shape)}, "
                             f"torch {tuple(torch_lowprec.shape)}")
    if not bool(torch.isfinite(kernel).all()):
        raise AssertionError(f"{name}: kernel output has NaN/inf")
    err_kernel = max_abs_err(kernel, ref)
    err_torch = max_abs_err(torch_lowprec, ref)
    bound = 2.0 * err_torch + atol
    assert err_kernel <= bound, (f"{name}: kernel error {err_kernel:.3e} > 2 x torch error {err_torch:.3e} "
                                 f"+ atol {atol:.1e} = {bound:.3e}")
