"""Parameter: a trainable array and its gradient."""
from __future__ import annotations


class Parameter:
    """A trainable array ``data`` with its gradient ``grad`` (same shape, dtype and device).

    ``grad`` is ``None`` until a backward pass fills it; each backward overwrites it (it
    does not accumulate), so there is no ``zero_grad`` to forget. ``name`` is set by the
    owning model (``"0.weight"``, ``"3.bias"``) and keys checkpoints and optimizer state.
    """

    __slots__ = ("data", "grad", "name")

    def __init__(self, data, name: str = ""):
        self.data = data
        self.grad = None
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        size = 1
        for dim in self.data.shape:
            size *= dim
        return size

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={self.shape}, dtype={self.data.dtype})"
