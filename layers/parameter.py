"""Parameter: a trainable array and its gradient; FlatParameters: many of them in one buffer.

A network's parameters live in one contiguous buffer per dtype and device, their
gradients in another, and ``Parameter.data``/``.grad`` are views into them (as in
torch's fused optimizers and DDP's gradient buckets). An optimizer step is then a few
operations over whole buffers, whatever the number of parameters, instead of a chain per
parameter: on a GPU each operation is a kernel launch, and at these sizes the launches,
not the arithmetic, take the time.
"""
from __future__ import annotations

from backends import backend_of


class Parameter:
    """A trainable array ``data`` with its gradient ``grad`` (same shape, dtype and device).

    ``grad`` is ``None`` until a backward pass fills it; each backward overwrites it (it
    does not accumulate), so there is no ``zero_grad`` to forget. ``name`` is set by the
    owning model (``"0.weight"``, ``"3.bias"``) and keys checkpoints and optimizer state.

    Assigning ``p.data = array`` or ``p.grad = array`` copies the values into the
    parameter's storage (a view of its model's flat buffer), so the buffer stays the one
    place the values live. Layers write gradients straight into ``grad_buffer()``.
    """

    __slots__ = ("_data", "_grad", "_has_grad", "name", "flat")

    def __init__(self, data, name: str = ""):
        self._data = data
        self._grad = None  # storage for the gradient, allocated at the first backward
        self._has_grad = False
        self.name = name
        self.flat: FlatParameters | None = None  # the buffer this parameter is a view of

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value) -> None:
        if value is not self._data:
            self._data[...] = _like(self._data, value, f"{self!r}.data")

    @property
    def grad(self):
        return self._grad if self._has_grad else None

    @grad.setter
    def grad(self, value) -> None:
        if value is None:
            self._has_grad = False
            return
        buffer = self.grad_buffer()
        if value is not buffer:
            buffer[...] = _like(self._data, value, f"{self!r}.grad")

    def grad_buffer(self):
        """The array this parameter's gradient is written into; from now on ``grad`` returns it."""
        if self._grad is None:
            self._grad = backend_of(self._data).xp.empty_like(self._data)
        self._has_grad = True
        return self._grad

    def place(self, data, grad=None) -> None:
        """Make ``data`` (and ``grad``) this parameter's storage: used when moving or packing."""
        self._data, self._grad = data, grad
        self._has_grad = self._has_grad and grad is not None
        self.flat = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def size(self) -> int:
        size = 1
        for dim in self._data.shape:
            size *= dim
        return size

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={self.shape}, dtype={self._data.dtype})"


def _like(storage, value, what: str):
    """``value`` as an array on ``storage``'s device and of its dtype, checked to have its shape."""
    if tuple(getattr(value, "shape", ())) != tuple(storage.shape):
        raise ValueError(f"cannot assign an array of shape {tuple(getattr(value, 'shape', ()))} to {what}, "
                         f"which has shape {tuple(storage.shape)}")
    backend = backend_of(storage)
    if backend is None:  # pragma: no cover - storage always comes from a backend
        return value
    return backend.asarray(value, dtype=storage.dtype)


class FlatParameters:
    """Parameters of one dtype on one device, stored back to back in two flat buffers.

    ``data`` and ``grad`` are 1-D arrays; parameter k is ``data[offsets[k]:offsets[k+1]]``
    reshaped to its shape (a view), likewise its gradient. ``parameters`` keeps the order.
    """

    def __init__(self, parameters: list[Parameter]):
        first = parameters[0].data
        backend = backend_of(first)
        xp = backend.xp
        self.backend, self.parameters = backend, list(parameters)
        self.offsets = [0]
        for parameter in self.parameters:
            self.offsets.append(self.offsets[-1] + parameter.size)
        self.data = xp.empty((self.offsets[-1],), dtype=first.dtype)
        self.grad = xp.zeros((self.offsets[-1],), dtype=first.dtype)
        for index, parameter in enumerate(self.parameters):
            data, grad = self.view(self.data, index), self.view(self.grad, index)
            data[...] = parameter.data
            had_grad = parameter.grad is not None
            if had_grad:
                grad[...] = parameter.grad
            parameter.place(data, grad)
            parameter._has_grad = had_grad
            parameter.flat = self

    def view(self, buffer, index: int):
        """Parameter ``index``'s part of a flat ``buffer`` (data, grad or optimizer state), in its shape."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.backend.xp.reshape(buffer[start:stop], self.parameters[index].shape)

    def span(self, buffer, first: int, last: int):
        """The 1-D part of ``buffer`` that holds parameters ``first`` to ``last`` (inclusive)."""
        return buffer[self.offsets[first]:self.offsets[last + 1]]

    def __len__(self) -> int:
        return len(self.parameters)

    def __repr__(self) -> str:
        return f"FlatParameters({len(self.parameters)} parameters, {self.offsets[-1]:,} values, {self.data.dtype})"


def flatten_parameters(parameters) -> list[FlatParameters]:
    """Store ``parameters`` in flat buffers, one per (device, dtype), keeping their order.

    Parameters already stored together, in this order and nothing else, are left as they
    are (so a model flattened when it was built and the optimizer given its parameters
    share one buffer). Values and gradients are kept; only where they live changes.
    """
    parameters = list(parameters)
    groups: dict[tuple, list[Parameter]] = {}
    for parameter in parameters:
        key = (id(backend_of(parameter.data)), str(parameter.data.dtype))
        groups.setdefault(key, []).append(parameter)
    flats = []
    for members in groups.values():
        current = members[0].flat
        if current is not None and current.parameters == members and all(p.flat is current for p in members):
            flats.append(current)
        else:
            flats.append(FlatParameters(members))
    return flats
