"""Every Triton kernel of the library lowers to real PTX + cubin for sm_80 and sm_90, with no GPU present."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed; nothing to lower")


def test_all_kernels_lower_for_sm80_and_sm90():
    from rpo_kernels.triton import KERNEL_MODULES

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run([sys.executable, "-m", "rpo_kernels.triton.lowering", "--arch", "80", "90"], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for mod_name in KERNEL_MODULES:
        kernels = {fn.fn.__name__ for fn, _, _ in importlib.import_module(mod_name).compile_specs()}
        for kernel in kernels:
            for arch in ("sm_80", "sm_90"):
                assert any(f"{mod_name}.{kernel} {arch}" in ln for ln in lines), f"{kernel} not lowered for {arch}"


def test_lowering_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-m", "rpo_kernels.triton.lowering", "--arch", "80"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "unset TRITON_INTERPRET" in out.stderr
