"""The one seed derivation of the project: every seeded choice (a group's cut, its samples, its cache update, a
sequence's noise stream) draws from a seed derived from its parts, so it does not depend on what else runs."""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (run seed, step, question index, purpose):
    ``blake2b(":".join(parts), 8 bytes) >> 1``."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
