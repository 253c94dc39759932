import pytest

from janus import derive_seed
from janus.seeds import MAX_SEED


def test_image_zero_uses_the_request_seed():
    for seed in (0, 1, 7, 2**40 + 3, MAX_SEED):
        assert derive_seed(seed, 0) == seed


def test_derived_seeds_are_distinct_deterministic_and_63_bit():
    seeds = [derive_seed(12345, k) for k in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert seeds == [derive_seed(12345, k) for k in range(1000)]
    assert derive_seed(0, 1) != derive_seed(1, 1)


def test_derive_seed_is_splitmix64_of_seed_plus_k_golden():
    mask = (1 << 64) - 1
    z = (5 + 3 * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    assert derive_seed(5, 3) == (z ^ (z >> 31)) & MAX_SEED


@pytest.mark.parametrize("seed,k", [(-1, 0), (2**63, 0), (0, -1), (1.5, 0), (0, True)])
def test_invalid_arguments(seed, k):
    with pytest.raises(ValueError):
        derive_seed(seed, k)
