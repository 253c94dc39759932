"""Row packing: fixed-shape forward passes built from the rows of many requests.

A forward pass always has exactly `capacity` rows and a prompt length that is a multiple of
`bucket`; unused rows are dummies. Units (one caption, or one image = a conditional row plus
an unconditional row when guided) only share a pass with units of the same shape key, so the
shapes a unit sees depend on the unit alone and its output is bitwise the same alone or in
any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

Unit = TypeVar("Unit")


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= value (and >= multiple)."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return max(multiple, -(-value // multiple) * multiple)


def pack(
    units: Sequence[Unit],
    *,
    capacity: int,
    rows: Callable[[Unit], int],
    key: Callable[[Unit], Hashable],
) -> list[list[Unit]]:
    """Split `units` into passes of at most `capacity` rows, never mixing keys (first fit).

    Each unit goes to the first pass of its key with room left, so a one-row unit can fill
    the gap a two-row unit left; passes come in order of creation.
    """
    passes: list[list[Unit]] = []
    room: list[int] = []
    pass_key: list[Hashable] = []
    for unit in units:
        need, unit_key = rows(unit), key(unit)
        if need > capacity:
            raise ValueError(f"a unit needs {need} rows but a pass holds only {capacity}")
        for i, free in enumerate(room):
            if free >= need and pass_key[i] == unit_key:
                passes[i].append(unit)
                room[i] -= need
                break
        else:
            passes.append([unit])
            room.append(capacity - need)
            pass_key.append(unit_key)
    return passes
