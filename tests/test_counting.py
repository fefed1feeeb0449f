"""The operation counter's device→host transfers (backends/counting.py): every kind it claims to
count is counted, once.

The launch-budget tests hold each training step to ``transfers == 0``. That check is only
as good as this list: a kind the counter missed (``bool(x)`` in an ``if``, say) would hide a
GPU sync inside a step.
"""
from __future__ import annotations

import operator

import numpy as np
import pytest

from backends.counting import count_operations

pytest.importorskip("array_api_strict")

TRANSFERS = {
    "float": lambda b, x, i, flag: float(x[0]),
    "int": lambda b, x, i, flag: int(i),
    "bool": lambda b, x, i, flag: "yes" if flag else "no",
    "complex": lambda b, x, i, flag: complex(x[0]),
    "__index__": lambda b, x, i, flag: operator.index(i),
    "index-of-a-list": lambda b, x, i, flag: [10, 11, 12, 13][i],
    "range": lambda b, x, i, flag: range(i),
    "__array__": lambda b, x, i, flag: np.asarray(x),
    "__dlpack__": lambda b, x, i, flag: np.from_dlpack(x),
    "iteration": lambda b, x, i, flag: [row for row in x],
    "to_numpy": lambda b, x, i, flag: b.to_numpy(x),
}


@pytest.mark.parametrize("kind", list(TRANSFERS))
def test_each_kind_of_transfer_counts_once(kind):
    from backends import get_backend

    strict = get_backend("strict")
    xp = strict.xp
    x, i, flag = xp.asarray([1.0, 2.0]), xp.asarray(3), xp.asarray(True)
    with count_operations() as counts:
        TRANSFERS[kind](strict, x, i, flag)
    assert counts.transfers == 1, (kind, counts)


def test_work_on_the_device_is_no_transfer():
    from backends import get_backend

    xp = get_backend("strict").xp
    x = xp.asarray([1.0, 2.0])
    with count_operations() as counts:
        y = xp.where(x > 1.0, x, -x)
        y.shape, y.dtype, y.ndim  # questions about the array, answered on the host without its values
    assert counts.transfers == 0 and counts.operations == 3, counts


def test_transfers_inside_a_counted_operation_are_part_of_it():
    """A fused function (one kernel on a GPU) that reads a value inside is that one operation."""
    from backends import get_backend
    from backends.counting import as_one_operation

    xp = get_backend("strict").xp
    x = xp.asarray([1.0, 2.0])
    with count_operations() as counts:
        with as_one_operation("inner"):
            float(x[0])
    assert (counts.operations, counts.transfers) == (1, 0), counts
