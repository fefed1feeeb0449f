"""Holding every engine of an op, under every device policy, to its reference, through the one interface.

Each op's ``ENGINES`` (layers/engine.py) name a reference engine and the fast ones. The
per-op test files call ``check_engines``: each engine runs on a backend with a policy
imposed (``POLICIES``, with ``dataclasses.replace``, so the GPU's formulation is checked on
the CPU too, and the CPU's tiles and threads on strict), and its output, input gradient
and parameter gradients (and any state it updates, like BatchNorm's running statistics)
must match the reference engine on the cpu backend in float64; a backward without the
input gradient must give the same parameter gradients and dx None.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from helpers import backend_or_skip

from layers.engine import Workspace

# (backend name, the policy imposed): each engine on each backend that can run it
POLICIES = {
    "cpu-tiles": ("cpu", dict(launch_bound=False, threads=2, tile_bytes=3000)),
    "cpu-launch-bound": ("cpu", dict(launch_bound=True, threads=1, tile_bytes=None, work_bytes=None)),
    "strict-launch-bound": ("strict", dict(launch_bound=True, work_bytes=None)),
    "strict-chunked": ("strict", dict(launch_bound=True, work_bytes=4000)),  # im2col in chunks of a few images
    "strict-tiles": ("strict", dict(launch_bound=False, tile_bytes=3000)),
    "cpu-reference": ("cpu", dict(engine="reference")),
    "strict-reference": ("strict", dict(engine="reference")),
    "cuda": ("cuda", {}),
}


def policy_backend(policy: str):
    """The backend of ``POLICIES[policy]`` with its policy imposed (or a skip, saying why)."""
    name, changes = POLICIES[policy]
    backend = backend_or_skip(name)
    return dataclasses.replace(backend, **changes) if changes else backend


def host(backend, array):
    return None if array is None else np.asarray(backend.to_numpy(array), dtype=np.float64)


def run_engine(engine, backend, make_params, x, dy, need_dx=True, state=()):
    """Forward and backward of ``engine`` on ``backend``, all through the engine interface.

    ``make_params(backend)``: the op's params with arrays on ``backend``; ``state``: names
    of params arrays the engine updates in place. Returns host float64 arrays:
    {"y", "dx", "grad:<name>", "state:<name>"}.
    """
    xp = backend.xp
    params = make_params(backend)
    work = Workspace(backend)
    x_device = backend.asarray(x) if isinstance(x, np.ndarray) else x
    y, saved = engine.forward(xp, x_device, params, work)
    out = {name: xp.empty(getattr(params, name).shape, dtype=getattr(params, name).dtype)
           for name in ("weight", "bias") if getattr(params, name, None) is not None}
    dy_device = backend.asarray(dy) if isinstance(dy, np.ndarray) else dy
    dx, grads = engine.backward(xp, dy_device, saved, params, work, need_dx, out)
    found = {"y": host(backend, y), "dx": host(backend, dx)}
    found.update({f"grad:{name}": host(backend, grad) for name, grad in grads.items()})
    found.update({f"state:{name}": host(backend, getattr(params, name)) for name in state})
    return found


def check_engines(engines, backend, make_params, x, dy, state=(), rtol=1e-12, atol=1e-12):
    """Every engine of ``engines`` on ``backend`` against ``engines.reference`` on the cpu, in float64."""
    from backends import get_backend

    expected = run_engine(engines.reference, get_backend("cpu"), make_params, x, dy, state=state)
    for kind in ("reference", "cpu", "launch_bound"):
        engine = getattr(engines, kind)
        found = run_engine(engine, backend, make_params, x, dy, state=state)
        assert sorted(found) == sorted(expected), f"{kind} engine {engine.__name__}: returns {sorted(found)}"
        for name, value in expected.items():
            np.testing.assert_allclose(found[name], value, rtol=rtol, atol=atol,
                                       err_msg=f"{kind} engine {engine.__name__}: {name} on {backend!r}")
        if not any(name.startswith("grad:") for name in expected):
            continue  # an op without parameters: its input gradient is all its backward does
        without_dx = run_engine(engine, backend, make_params, x, dy, need_dx=False, state=state)
        assert without_dx["dx"] is None, f"{engine.__name__}: need_dx=False still returned dx"
        for name in (name for name in expected if name.startswith("grad:")):
            np.testing.assert_allclose(without_dx[name], expected[name], rtol=rtol, atol=atol,
                                       err_msg=f"{kind} engine {engine.__name__} without dx: {name}")
