import pytest

from janus.packing import pack, round_up


def test_round_up():
    assert [round_up(v, 32) for v in (0, 1, 31, 32, 33, 64, 65)] == [32, 32, 32, 32, 64, 64, 96]


def test_pack_fills_passes_in_order_and_never_mixes_keys():
    units = [("a", 2), ("a", 2), ("b", 1), ("a", 2), ("b", 2), ("a", 1)]
    passes = pack(units, capacity=4, rows=lambda u: u[1], key=lambda u: u[0])
    assert passes == [[("a", 2), ("a", 2)], [("b", 1), ("b", 2)], [("a", 2), ("a", 1)]]
    for batch in passes:
        assert sum(u[1] for u in batch) <= 4
        assert len({u[0] for u in batch}) == 1


def test_first_fit_fills_gaps_with_later_small_units():
    units = [("a", 2), ("a", 2), ("a", 1), ("a", 2), ("a", 1)]
    passes = pack(units, capacity=3, rows=lambda u: u[1], key=lambda u: u[0])
    assert passes == [[("a", 2), ("a", 1)], [("a", 2), ("a", 1)], [("a", 2)]]


def test_pack_rejects_a_unit_larger_than_a_pass():
    with pytest.raises(ValueError):
        pack([("a", 3)], capacity=2, rows=lambda u: u[1], key=lambda u: u[0])


def test_pack_empty():
    assert pack([], capacity=4, rows=lambda u: 1, key=lambda u: 0) == []
