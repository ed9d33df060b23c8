"""What machine the GPU suite runs on: card, driver, CUDA, Python and library versions, rpo_kernels.backends().

    python scripts/gpu_env.py [--out DIR]      prints a report; with --out also writes DIR/env.json

Works on any machine (a CPU-only one reports that it has no GPU); never fails because a tool is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def command_output(*cmd: str) -> str:
    """The command's stripped output, or why there is none."""
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not found"
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{cmd[0]}: {exc}"
    return (res.stdout or res.stderr).strip()


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> dict:
    import torch

    import rpo_kernels

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "nvidia_smi": command_output("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                     "--format=csv,noheader"),
        "nvcc": command_output("nvcc", "--version").splitlines()[-1],
        "cmake": command_output("cmake", "--version").splitlines()[0],
        "ninja": command_output("ninja", "--version"),
        "packages": {p: version_of(p) for p in ("triton", "transformers", "safetensors", "tokenizers", "numpy",
                                                "math-verify", "liger-kernel", "flash-attn", "pytest",
                                                "pytest-timeout")},
        "rpo_kernels": rpo_kernels.__version__,
        "backends": rpo_kernels.backends(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                          "multiprocessors": props.multi_processor_count,
                          "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for env.json")
    args = parser.parse_args(argv)
    info = report()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v['available'] if isinstance(v, dict) else v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    for name, status in info["backends"].items():
        print(f"backend {name}: {'yes' if status['available'] else 'no'} ({status['why']})")
    if not info["cuda_available"]:
        print("no CUDA GPU here: the GPU steps of the suite cannot run on this machine")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
