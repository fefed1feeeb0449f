"""Optimizers: SGD, Adam and AdamW, with exactly the update rules of ``torch.optim``.

>>> opt = Adam(model.parameters(), lr=1e-3)
>>> loss.backward(); model.backward(dloss)   # fills every Parameter.grad
>>> opt.step()                                # updates every Parameter.data in place

The code is written once against the array namespace of the parameters themselves
(``array_api_compat.array_namespace(p.data)``), so it runs unchanged on NumPy, CuPy and
array-api-strict. It never imports numpy or cupy.

Notes that hold for all three optimizers, as in PyTorch:

* parameters whose ``grad`` is ``None`` are skipped (their state does not advance);
* hyperparameters are plain attributes (``opt.lr = 0.01`` takes effect on the next step);
* ``state_dict()`` / ``load_state_dict()`` save and restore everything a resumed run
  needs to continue exactly, hyperparameters included.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from array_api_compat import array_namespace
from array_api_compat import device as array_device

from backends import backend_of

# Below this many elements a parameter is updated in one piece: handing rows to threads
# costs tens of microseconds, more than the update of a small array (which fits the cache).
PARALLEL_MIN_ELEMENTS = 1 << 20


class Optimizer:
    """What every optimizer shares: the parameter list, per-parameter state, checkpoints.

    A subclass lists its hyperparameters in ``hyper_names``, checks and normalises them in
    ``_checked_hyper`` and updates one parameter in ``_update``. Per-parameter state is a
    dict per parameter (``self.state[i]``): arrays on the parameter's device, plus the
    integer ``"step"`` where an optimizer counts steps.
    """

    hyper_names: tuple[str, ...] = ()
    scalar_state_keys: frozenset[str] = frozenset()  # per-parameter state that is not an array

    def __init__(self, params: Iterable, **hyper: Any):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list; pass model.parameters()")
        for i, p in enumerate(params):
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(f"parameter {i}: expected a Parameter (with .data and .grad), got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears more than once in the parameter list")
        self.params = params
        self.state: list[dict[str, Any]] = [{} for _ in params]
        self._set_hyper(self._checked_hyper(**hyper))

    # --- the update ---------------------------------------------------------------
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"parameter {i} ({p.name or 'unnamed'}): grad has shape {tuple(p.grad.shape)}, "
                    f"expected the parameter's shape {tuple(p.data.shape)}"
                )
            self._update(p, p.grad, self.state[i])

    def zero_grad(self) -> None:
        """Forget all gradients (set them to ``None``)."""
        for p in self.params:
            p.grad = None

    def _update(self, p, grad, state: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def _by_rows(update, *arrays) -> None:
        """``update(*arrays)``, on the cpu backend in cache-sized blocks of rows over its threads.

        Every update rule is element-wise and in place, so each thread updating its own
        rows of the parameter, gradient and state arrays (all the same shape) is the same
        arithmetic. Each thread goes through its rows a block at a time (``batch_tile``),
        so the several passes of a rule read the block from the cache, not from memory.
        On a GPU, and for small parameters, ``update`` gets the whole arrays.
        """
        data = arrays[0]
        backend = backend_of(data)
        if backend is None or data.ndim == 0 or data.size < PARALLEL_MIN_ELEMENTS:
            update(*arrays)
            return
        row_bytes = (data.size // data.shape[0]) * (array_namespace(data).finfo(data.dtype).bits // 8)
        block = backend.batch_tile(row_bytes * len(arrays)) or data.shape[0]

        def update_rows(rows):
            for start in range(rows.start, rows.stop, block):
                part = slice(start, min(start + block, rows.stop))
                update(*(array[part, ...] for array in arrays))

        backend.map_slices(update_rows, data.shape[0])

    @classmethod
    def _checked_hyper(cls, **hyper: Any) -> dict[str, Any]:
        """Check the hyperparameters and return them as plain Python numbers."""
        raise NotImplementedError

    @classmethod
    def _state_keys(cls, hyper: dict[str, Any]) -> set[str]:
        """The keys a parameter's state has, once updated, under these hyperparameters."""
        raise NotImplementedError

    # --- checkpoints ---------------------------------------------------------------
    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        for name, value in hyper.items():
            setattr(self, name, value)

    def hyperparameters(self) -> dict[str, Any]:
        """The current hyperparameters by name, e.g. ``{"lr": 0.1, "momentum": 0.9, ...}``."""
        return {name: getattr(self, name) for name in self.hyper_names}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as a plain dict::

            {"optimizer": "Adam",                          # the class name
             "hyper": {"lr": 0.001, "betas": (0.9, 0.999), ...},
             "num_params": 3,
             "state": {0: {"step": 5, "exp_avg": <array>, ...}, ...}}

        ``state`` has an entry for each parameter (by its index in ``params``) that has
        been updated at least once; its arrays are copies on the parameters' device.
        """
        state = {}
        for i, s in enumerate(self.state):
            if s:
                state[i] = {
                    key: value if key in self.scalar_state_keys else array_namespace(value).asarray(value, copy=True)
                    for key, value in s.items()
                }
        return {
            "optimizer": type(self).__name__,
            "hyper": self.hyperparameters(),
            "num_params": len(self.params),
            "state": state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict()`` returned, hyperparameters included (as torch does).

        Arrays may be NumPy arrays (as read back from a checkpoint) or arrays of the
        parameters' backend; scalars may be 0-d arrays, parameter indices strings, and an
        empty ``"state"`` may be left out (a flat checkpoint drops empty dicts).
        Everything is checked before anything is changed: a mismatch raises ValueError
        and leaves the optimizer as it was.
        """
        name = type(self).__name__

        def mismatch(what: str) -> ValueError:
            return ValueError(f"cannot load optimizer state into {name}: {what}")

        if not isinstance(state_dict, dict):
            raise mismatch(f"expected a dict from state_dict(), got {type(state_dict).__name__}")
        missing = [k for k in ("optimizer", "hyper", "num_params") if k not in state_dict]
        if missing:
            raise mismatch(f"missing key(s) {missing}; expected the dict that state_dict() returns")
        saved_type = str(state_dict["optimizer"])
        if saved_type != name:
            raise mismatch(f"the state was saved by {saved_type}, expected {name}")
        num_params = int(state_dict["num_params"])
        if num_params != len(self.params):
            raise mismatch(f"the state is for {num_params} parameters, this optimizer has {len(self.params)}")
        saved_hyper = dict(state_dict["hyper"])
        if set(saved_hyper) != set(self.hyper_names):
            raise mismatch(f"hyperparameters {sorted(saved_hyper)}, expected {sorted(self.hyper_names)}")
        hyper = self._checked_hyper(**saved_hyper)

        # Which state a parameter has depends on the hyperparameters being loaded
        # (momentum for SGD, amsgrad for Adam).
        expected_keys = self._state_keys(hyper)

        new_state: list[dict[str, Any]] = [{} for _ in self.params]
        for key, saved in dict(state_dict.get("state", {})).items():
            i = int(key)
            if not 0 <= i < len(self.params):
                raise mismatch(f"state for parameter {i}, but there are only {len(self.params)} parameters")
            p = self.params[i]
            where = f"parameter {i} ({p.name or 'unnamed'})"
            saved = dict(saved)
            if not saved:
                continue
            if set(saved) != expected_keys:
                raise mismatch(f"{where} has state {sorted(saved)}, expected {sorted(expected_keys)}")
            xp = array_namespace(p.data)
            for k, value in saved.items():
                if k in self.scalar_state_keys:
                    new_state[i][k] = int(value)
                    continue
                shape = tuple(getattr(value, "shape", ()))
                if shape != tuple(p.data.shape):
                    raise mismatch(f"{where}: {k!r} has shape {shape}, expected {tuple(p.data.shape)}")
                new_state[i][k] = xp.asarray(value, dtype=p.data.dtype, device=array_device(p.data), copy=True)

        self._set_hyper(hyper)
        self.state = new_state

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


def _non_negative(name: str, value: Any) -> float:
    value = float(value)
    if not value >= 0.0:  # also refuses NaN
        raise ValueError(f"invalid {name}: {value}; it must be >= 0")
    return value


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    With gradient g_t of parameter θ, learning rate γ, weight decay λ, momentum μ and
    dampening τ, each step does::

        g_t ← g_t + λ θ_{t-1}                      (if λ ≠ 0)
        b_t ← g_t                                  (first step, if μ ≠ 0)
        b_t ← μ b_{t-1} + (1 - τ) g_t              (later steps)
        g_t ← g_t + μ b_t  if nesterov, else  b_t  (if μ ≠ 0)
        θ_t ← θ_{t-1} - γ g_t

    The momentum buffer b is the per-parameter state ``"momentum_buffer"``.
    """

    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    @classmethod
    def _checked_hyper(cls, lr, momentum, dampening, weight_decay, nesterov):
        hyper = {
            "lr": _non_negative("learning rate (lr)", lr),
            "momentum": _non_negative("momentum", momentum),
            "dampening": float(dampening),
            "weight_decay": _non_negative("weight_decay", weight_decay),
            "nesterov": bool(nesterov),
        }
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening = 0, "
                f"got momentum={hyper['momentum']}, dampening={hyper['dampening']}"
            )
        return hyper

    @classmethod
    def _state_keys(cls, hyper):
        return {"momentum_buffer"} if hyper["momentum"] != 0 else set()

    def _update(self, p, grad, state):
        momentum, dampening, first = self.momentum, self.dampening, False
        if momentum != 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = array_namespace(p.data).zeros_like(p.data)
            first = True

        def update(data, grad, buf=None):
            g = grad + self.weight_decay * data if self.weight_decay != 0 else grad
            if buf is not None:
                if first:
                    buf[...] = g  # b_1 = g_1: no dampening yet
                else:
                    # in place, as torch does: fresh arrays of a large layer cost more than the arithmetic
                    buf *= momentum
                    buf += g if dampening == 0 else (1 - dampening) * g
                g = g + momentum * buf if self.nesterov else buf
            data -= self.lr * g

        if momentum != 0:
            self._by_rows(update, p.data, grad, state["momentum_buffer"])
        else:
            self._by_rows(update, p.data, grad)


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (weight decay added to the gradient, i.e. L2).

    With gradient g_t, learning rate γ, betas (β1, β2), weight decay λ and step count t
    (per parameter, starting at 1), each step does::

        g_t ← g_t + λ θ_{t-1}                      (if λ ≠ 0)
        m_t ← β1 m_{t-1} + (1 - β1) g_t            (m_0 = 0)
        v_t ← β2 v_{t-1} + (1 - β2) g_t²           (v_0 = 0)
        v_t ← max(v^max_{t-1}, v_t) =: v^max_t     (amsgrad only: raw v, not bias-corrected)
        θ_t ← θ_{t-1} - γ/(1 - β1^t) · m_t / (√v_t / √(1 - β2^t) + ε)

    that is θ ← θ - γ m̂/(√v̂ + ε) with the bias corrections m̂ = m/(1-β1^t),
    v̂ = v/(1-β2^t). State per parameter: ``"step"``, ``"exp_avg"`` (m),
    ``"exp_avg_sq"`` (v) and, with amsgrad, ``"max_exp_avg_sq"``.
    """

    hyper_names = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    scalar_state_keys = frozenset({"step"})

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    @classmethod
    def _checked_hyper(cls, lr, betas, eps, weight_decay, amsgrad):
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas}")
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"invalid beta parameter at index {index}: {beta}; it must be in [0, 1)")
        return {
            "lr": _non_negative("learning rate (lr)", lr),
            "betas": betas,
            "eps": _non_negative("epsilon value (eps)", eps),
            "weight_decay": _non_negative("weight_decay", weight_decay),
            "amsgrad": bool(amsgrad),
        }

    @classmethod
    def _state_keys(cls, hyper):
        keys = {"step", "exp_avg", "exp_avg_sq"}
        return keys | {"max_exp_avg_sq"} if hyper["amsgrad"] else keys

    def _decayed_gradient(self, data, grad):
        """Adam's weight decay is an L2 term added to the gradient."""
        return grad + self.weight_decay * data if self.weight_decay != 0 else grad

    def _update(self, p, grad, state):
        xp = array_namespace(p.data)
        beta1, beta2 = self.betas
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            if self.amsgrad:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t

        def update(data, grad, m, v, v_max=None):
            g = self._decayed_gradient(data, grad)
            # m ← β1 m + (1-β1) g and v ← β2 v + (1-β2) g², in place
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * (g * g)
            if v_max is not None:
                v_max[...] = xp.maximum(v_max, v)
                v = v_max
            denom = xp.sqrt(v)
            denom /= math.sqrt(bias_correction2)
            denom += self.eps
            step = m / denom
            step *= self.lr / bias_correction1
            data -= step

        arrays = [p.data, grad, state["exp_avg"], state["exp_avg_sq"]]
        self._by_rows(update, *arrays, *([state["max_exp_avg_sq"]] if self.amsgrad else []))


class AdamW(Adam):
    r"""Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    The parameter is first shrunk, then takes a plain Adam step (no L2 term in g)::

        θ_{t-1} ← θ_{t-1} (1 - γ λ)
        θ_t ← Adam step of θ_{t-1} with gradient g_t   (see Adam)

    Default weight decay λ = 1e-2. Same state as Adam.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def _decayed_gradient(self, data, grad):
        """AdamW's weight decay shrinks the parameter itself; the gradient is unchanged."""
        if self.weight_decay != 0:
            data *= 1 - self.lr * self.weight_decay
        return grad


__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
