"""Where the CUDA toolkit is, for the tests that compile csrc/ without a GPU."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path


@functools.cache
def cuda_home() -> Path | None:
    """The toolkit root (with include/cuda_runtime_api.h): $CUDA_HOME, $CUDA_PATH, nvcc's own TOP, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
        try:  # nvcc may be a wrapper script; its dry run names the real installation
            dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            match = re.search(r"TOP=(\S+)", dry.stdout + dry.stderr)
            if match:
                candidates.append(str(Path(match.group(1)).resolve()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and (Path(candidate) / "include" / "cuda_runtime_api.h").exists():
            return Path(candidate)
    return None
