"""What ``cupy.fuse`` would compile for a function, found without a GPU.

CuPy's fusion tracer (the "old" one, which Backend.fuse uses) only reads the shapes and
dtypes of its arguments, so it runs on placeholder ``cupy.ndarray``s over memory that is
never touched, on a machine with CuPy installed and no GPU. It shows the type of every
operation of the kernel, which is how tests/test_fusion.py finds a number computed in
float16 or a float64 operation in a float32 kernel:

>>> kernel, op_dtypes = cupy_trace(lambda x, b: x * (1 - b), (placeholder((4,), "float32"), 0.999))
>>> op_dtypes      # {'<_FusionOp #0, cupy_subtract types=[float16, ...]>': [float16, ...], ...}

Nothing is compiled or run. Needs CuPy (``import cupy`` raises ImportError without it).
"""
from __future__ import annotations

import numpy as np


def placeholder(shape, dtype):
    """A cupy.ndarray of ``shape`` and ``dtype`` over memory that is never read or written."""
    import cupy

    size = max(1, int(np.prod(shape))) * np.dtype(dtype).itemsize
    memory = cupy.cuda.UnownedMemory(0x10000, size, None, 0)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def cupy_trace(function, args, name: str = "traced"):
    """``(kernel, op_dtypes)``: the kernel cupy.fuse would build for ``function(*args)`` and,
    for each of its operations (the reduction included), the dtypes it computes in."""
    from cupy._core import _fusion_thread_local as local
    from cupy._core import fusion

    history = fusion._FusionHistory()
    local.thread_local.history, local.thread_local.is_old_fusing = history, True
    try:
        kernel, _ = history.get_fusion(function, args, name)
    finally:
        local.thread_local.history, local.thread_local.is_old_fusing = None, False
    operations = list(history.op_list) + list(getattr(history, "postmap_op_list", []))
    op_dtypes = {f"{op}": [np.dtype(d) for d in op.dtypes] for op in operations}
    reduction = getattr(history, "reduce_op", None)
    if reduction is not None:
        op_dtypes[f"reduction {reduction.routine[1]}"] = [np.dtype(d) for d in (*reduction.in_types,
                                                                               *reduction.out_types)]
    return kernel, op_dtypes
