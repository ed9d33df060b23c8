"""The bundled recurrence tasks' arithmetic, computed independently of rpo_train (the tests' oracle)."""

from __future__ import annotations


def fib_mod10(a: int, b: int, steps: int) -> list[int]:
    """a, b and the next ``steps`` terms of the Fibonacci recurrence mod 10."""
    terms = [a, b]
    for _ in range(steps):
        terms.append((terms[-1] + terms[-2]) % 10)
    return terms
