"""Lower every Triton kernel of rpo_kernels to PTX and cubin for real GPU targets, with no GPU present.

``python -m rpo_kernels.triton.lowering --arch 80 90`` compiles each (kernel, signature, constexprs) triple that the
modules of ``KERNEL_MODULES`` declare through ``compile_specs()``, checks that the specs cover every ``@triton.jit``
function of the module, prints one line per compiled kernel and exits non-zero on any failure. It must run with
``TRITON_INTERPRET`` unset (the interpreter replaces kernels by Python functions that cannot be compiled).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

# Largest dynamic shared memory per block (opt-in) of the targets we check.
SHARED_MEMORY_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}


def lower_all(archs: tuple[int, ...]) -> list[str]:
    """Compile every declared kernel for each compute capability in ``archs``; returns report lines."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET to lower kernels for a GPU target")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from . import KERNEL_MODULES

    modules = {name: importlib.import_module(name) for name in KERNEL_MODULES}
    all_specs = {name: module.compile_specs() for name, module in modules.items()}
    jitted = {obj.fn.__name__: obj.fn for module in modules.values() for obj in vars(module).values()
              if isinstance(obj, JITFunction)}
    reached = _reached({fn.fn.__name__ for specs in all_specs.values() for fn, _, _ in specs}, jitted)
    lines = []
    for mod_name, module in modules.items():
        specs = all_specs[mod_name]
        declared = {name for name, obj in vars(module).items() if isinstance(obj, JITFunction)}
        missing = declared - reached
        if missing:
            raise RuntimeError(f"{mod_name}: kernels without a compile spec: {sorted(missing)}")
        options = dict(getattr(module, "LAUNCH_OPTIONS", {}))
        for arch in archs:
            for fn, signature, constexprs in specs:
                start = time.perf_counter()
                compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                          target=GPUTarget("cuda", arch, 32), options=options)
                name = f"{mod_name}.{fn.fn.__name__} sm_{arch} {signature[next(iter(signature))]}"
                ptx, cubin = compiled.asm.get("ptx", ""), compiled.asm.get("cubin", b"")
                if not ptx or not cubin:
                    raise RuntimeError(f"{name}: no PTX/cubin produced")
                shared = int(compiled.metadata.shared)
                if shared > SHARED_MEMORY_BYTES[arch]:
                    raise RuntimeError(f"{name}: needs {shared} B of shared memory, sm_{arch} has "
                                       f"{SHARED_MEMORY_BYTES[arch]} B")
                lines.append(f"ok {name} cubin={len(cubin)}B shared={shared}B {time.perf_counter() - start:.1f}s")
    return lines


def _reached(covered: set[str], jitted: dict) -> set[str]:
    """Kernels with a spec plus every jit helper they call, directly or through other helpers (compiled inline)."""
    import inspect

    reached, frontier = set(covered), list(covered)
    while frontier:
        source = inspect.getsource(jitted[frontier.pop()])
        for name in jitted.keys() - reached:
            if f"{name}(" in source:
                reached.add(name)
                frontier.append(name)
    return reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_MEMORY_BYTES),
                        help="compute capabilities, e.g. 80 90")
    args = parser.parse_args(argv)
    try:
        for line in lower_all(tuple(args.arch)):
            print(line, flush=True)
    except Exception as exc:  # report and fail: this is a CLI check
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
