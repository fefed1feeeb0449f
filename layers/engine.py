"""One interface for every op's engines: the reference (the math) and the fast ones.

An *engine* computes one op (conv, pool, linear, batchnorm, loss, ReLU, dropout) and has
two methods, the same for every engine of every op (CS231n's naive/fast pairs)::

    forward(xp, x, params, work)                      -> (y, saved)
    backward(xp, dy, saved, params, work, need_dx, out) -> (dx, grads)

* ``params``: the op's arrays and settings (a small dataclass beside the op, e.g.
  ``ConvParams``), made by the layer for each call;
* ``work``: a ``Workspace``: the backend (its ``xp`` and its policy: threads, tiles,
  fusion) and scratch memory kept from call to call;
* ``saved``: whatever forward wants backward to have; the layer keeps it, never reads it;
* ``need_dx``: False for a network's first layer: dx (then None) is skipped;
* ``out``: {parameter name: gradient buffer}; an engine may write a gradient straight
  into its buffer (no copy) or return a new array;
* ``grads``: {parameter name: gradient}; the layer, and only the layer, sets them.

Each op has a *reference* engine whose forward and backward are the definition, written
plainly with array operations: ``XPNET_ENGINE=reference`` or
``get_backend("cpu", engine="reference")`` makes every layer run it, so a learner steps
from ``Conv2D.forward`` straight into the math. The fast engines compute the same thing
in the form that suits the device, and the tests hold each one to the reference.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Engines:
    """The engines of one op: the reference, and the fast ones by kind of device.

    ``cpu``: for a backend that splits work over cores and tiles (``Backend.threads``,
    ``batch_tile``); ``launch_bound``: for one where every operation is a kernel launch
    (a GPU, and strict, which counts those launches). Either may be the reference itself
    when the plain form is already the fast one.
    """

    reference: object
    cpu: object
    launch_bound: object

    def pick(self, backend):
        """The engine ``backend``'s policy asks for: the one place a layer reads it."""
        if backend.engine == "reference":
            return self.reference
        return self.launch_bound if backend.launch_bound else self.cpu


class Workspace:
    """The backend an engine runs on and the scratch memory it keeps between calls.

    One per layer (a new one after ``layer.to``). Allocating a large array each step
    costs more than filling it (the operating system hands out fresh, zeroed pages every
    time), so engines ask here for their work arrays by name. Only for arrays an engine
    keeps to itself, never for what it returns.
    """

    def __init__(self, backend):
        self.backend = backend
        self.xp = backend.xp
        self._arrays = {}
        self.notes = {}  # small facts an engine keeps about its buffers (conv_rows: what they hold)

    def scratch(self, name: str, shape: tuple[int, ...], dtype, zeroed: bool = False):
        """A work array of ``shape``, kept from call to call.

        Contents are whatever the last call left, except that with ``zeroed`` a newly
        allocated array starts as zeros (for callers that never write some region and
        need it to stay zero).
        """
        array = self._arrays.get(name)
        if array is None or tuple(array.shape) != tuple(shape) or array.dtype != dtype:
            allocate = self.xp.zeros if zeroed else self.xp.empty
            array = self._arrays[name] = allocate(shape, dtype=dtype)
        return array

    def constant(self, name: str, make):
        """An array made once, with ``make()``, and reused (index tables, ranks)."""
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = make()
        return array
