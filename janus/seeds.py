"""Seed derivation: image k of a request with seed s is sampled from `derive_seed(s, k)`.

The mixing is SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", 2014) applied to `s + k * 0x9E3779B97F4A7C15 (mod 2**64)`, truncated to 63 bits,
with `derive_seed(s, 0) == s` so a request with n=1 regenerates its own image 0, and
`GenerateRequest(prompt, n=1, seed=derive_seed(s, k))` regenerates image k exactly.
"""

from __future__ import annotations

MAX_SEED = (1 << 63) - 1
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(x: int) -> int:
    """One SplitMix64 finaliser step on a 64-bit integer."""
    z = x & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def check_seed(seed: int) -> int:
    """Return `seed` if it is an int in [0, 2**63 - 1], else raise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    return seed


def derive_seed(seed: int, k: int) -> int:
    """Seed of image `k` (0-based) of a request whose seed is `seed`; 63-bit, k=0 gives `seed`."""
    check_seed(seed)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if k == 0:
        return seed
    return _splitmix64(seed + k * _GOLDEN) & MAX_SEED
