"""Backend selection: per-call pins are strict, the environment variable is a ceiling, CPU never picks the
interpreter by itself, and the package imports without triton or a compiled extension."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import rpo_kernels
from rpo_kernels._dispatch import ENV_VAR, resolve_backend

CPU = torch.device("cpu")


def test_backends_report_every_backend_with_a_reason():
    report = rpo_kernels.backends("cpu")
    assert set(report) == {"cuda", "triton", "reference"}
    assert report["reference"]["available"] is True
    for entry in report.values():
        assert isinstance(entry["why"], str) and entry["why"]


def test_auto_on_cpu_picks_reference_even_with_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("op", CPU, None, ("cuda", "triton", "reference")) == "reference"


def test_pin_is_strict(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("op", CPU, "triton", ("triton", "reference")) == "triton"
    with pytest.raises(ValueError, match="not implemented"):
        resolve_backend("op", CPU, "cuda", ("triton", "reference"))
    with pytest.raises(ValueError, match="'backend'"):
        resolve_backend("op", CPU, "fast", ("reference",))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("op", CPU, "triton", ("triton", "reference"))


def test_cuda_pin_without_extension_explains_why():
    if rpo_kernels.backends("cpu")["cuda"]["why"].startswith("rpo_kernels._C loaded"):
        pytest.skip("the CUDA extension is built here; this checks the message when it is not")
    with pytest.raises(RuntimeError, match="rpo_kernels._C"):
        resolve_backend("op", CPU, "cuda", ("cuda", "reference"))


def test_environment_variable_is_validated_and_acts_as_ceiling(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend("op", CPU, None, ("reference",))
    monkeypatch.setenv(ENV_VAR, "cuda")  # ceiling above what the op has: falls down the chain
    assert resolve_backend("op", CPU, None, ("triton", "reference")) == "reference"
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_backend("op", torch.device("cuda"), None, ("triton", "reference")) == "reference"


def test_import_without_triton_or_extension():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import rpo_kernels, torch\n"
            "r = rpo_kernels.backends('cpu')\n"
            "assert not r['triton']['available'] and 'not importable' in r['triton']['why'], r\n"
            "h = torch.randn(4, 8); w = torch.randn(5, 8); t = torch.tensor([0, 1, 2, 4])\n"
            "print(rpo_kernels.token_logprobs(h, w, t).shape)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([4])" in out.stdout
