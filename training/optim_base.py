"""Optimizer: what SGD, Adam and AdamW share (training/optim.py holds their update rules).

Each optimizer is an update rule, written once as plain math on arrays, and this base
class, which decides how it runs:

* The parameters live in flat buffers (layers/parameter.py), so the rule runs on whole
  buffers: the data, the gradients and each state array (momentum, Adam's moments) of
  all parameters at once. Parameters updated together must have a gradient this step and
  the same step count, which is the normal case; otherwise the rule runs on each stretch
  of consecutive parameters that do.
* The rule goes through ``backend.fuse``: on a GPU it is one kernel per step, whatever
  the number of parameters; on the CPU, ``backend.map_blocks`` runs it over cache-sized
  blocks on every core.
* ``state_dict()``/``load_state_dict()`` save and restore everything a resumed run needs,
  per parameter, in the format torch uses.

Notes that hold for all optimizers, as in PyTorch: parameters whose ``grad`` is ``None``
are skipped (their state does not advance); hyperparameters are plain attributes
(``opt.lr = 0.01`` takes effect on the next step).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from array_api_compat import array_namespace
from array_api_compat import device as array_device

from layers.parameter import flatten_parameters


class Optimizer:
    """Base class: the parameter list, flat state buffers, one fused update per step.

    A subclass says four things and answers three questions:

    * ``rule``: a function ``rule(xp, param, grad, *state, *numbers, **switches)`` that
      updates its arrays in place;
    * ``hyper_names``: its hyperparameters; ``state_names``: every state array the rule
      takes, in its argument order; ``counts_steps``: whether a step count is part of the
      state (Adam's bias corrections need it);
    * ``_checked_hyper(**hyper)``: the hyperparameters, checked, as plain numbers;
    * ``_array_state(hyper)``: which of ``state_names`` exist under them;
    * ``_step_arguments(step)``: the numbers and the switches the rule gets at update ``step``.

    ``self.state[i]`` is parameter i's state: its step count where the optimizer keeps one,
    and views of the flat state buffers.
    """

    rule: Callable = None
    hyper_names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()
    counts_steps = False

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
        self._set_hyper(self._checked_hyper(**hyper))
        self.flats = flatten_parameters(params)
        self._index = {id(p): i for i, p in enumerate(params)}
        self.state: list[dict[str, Any]] = [{} for _ in params]
        self._updates = [0] * len(params)  # how many times each parameter has been updated
        self._buffers: list[dict[str, Any]] = [{} for _ in self.flats]  # per flat group: state name → flat array

    # --- the update ---------------------------------------------------------------
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group, flat in enumerate(self.flats):
            for first, last in self._stretches(flat):
                self._update(group, flat, first, last)

    def zero_grad(self) -> None:
        """Forget all gradients (set them to ``None``)."""
        for p in self.params:
            p.grad = None

    def _stretches(self, flat) -> list[tuple[int, int]]:
        """(first, last) of each run of consecutive parameters updated alike: with a gradient and
        the same step count (all of them, normally)."""
        runs, start, key = [], None, None
        for k, p in enumerate(flat.parameters + [None]):
            this = None if p is None or p.grad is None else self._step_key(self._updates[self._index[id(p)]])
            if start is not None and this != key:
                runs.append((start, k - 1))
                start = None
            if this is not None and start is None:
                start, key = k, this
        return runs

    def _step_key(self, updates: int):
        """What must be equal for parameters to share one update: the step count, or only
        whether this is the first update."""
        return updates if self.counts_steps else min(updates, 1)

    def _update(self, group: int, flat, first: int, last: int) -> None:
        members = [self._index[id(p)] for p in flat.parameters[first:last + 1]]
        step = self._updates[members[0]] + 1
        names = self._array_state(self.hyperparameters())
        buffers = self._buffers[group]
        xp = flat.backend.xp
        for name in names:
            if name not in buffers:
                buffers[name] = xp.zeros_like(flat.data)
        state = [flat.span(buffers[name], first, last) if name in names else None for name in self.state_names]
        numbers, switches = self._step_arguments(step)
        rule = flat.backend.fuse(type(self).rule, **switches)
        flat.backend.map_blocks(lambda *arrays: rule(*arrays, *numbers),
                                flat.span(flat.data, first, last), flat.span(flat.grad, first, last), *state)
        for k, i in zip(range(first, last + 1), members):
            self._updates[i] = step
            for name in names:
                if name not in self.state[i]:
                    self.state[i][name] = flat.view(buffers[name], k)
            if self.counts_steps:
                self.state[i]["step"] = step

    # --- what a subclass says -------------------------------------------------------
    @classmethod
    def _checked_hyper(cls, **hyper: Any) -> dict[str, Any]:
        """Check the hyperparameters and return them as plain Python numbers."""
        raise NotImplementedError

    @classmethod
    def _array_state(cls, hyper: dict[str, Any]) -> tuple[str, ...]:
        """The state arrays a parameter has under these hyperparameters (e.g. ("momentum_buffer",))."""
        raise NotImplementedError

    def _step_arguments(self, step: int) -> tuple[tuple, dict[str, Any]]:
        """The numbers the rule takes after its arrays, and its keyword switches (each
        combination is compiled once), at update number ``step`` (1 first)."""
        raise NotImplementedError

    @classmethod
    def _state_keys(cls, hyper: dict[str, Any]) -> set[str]:
        """The keys a parameter's state has, once updated, under these hyperparameters."""
        return set(cls._array_state(hyper)) | ({"step"} if cls.counts_steps else set())

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
                    key: value if key == "step" else array_namespace(value).asarray(value, copy=True)
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
        hyper, loaded = self._checked_state_dict(state_dict)
        self._set_hyper(hyper)
        self.state = [{} for _ in self.params]
        self._updates = [0] * len(self.params)
        self._buffers = [{} for _ in self.flats]
        names = self._array_state(hyper)
        for group, flat in enumerate(self.flats):
            for name in names:
                self._buffers[group][name] = flat.backend.xp.zeros_like(flat.data)
            for k, p in enumerate(flat.parameters):
                i = self._index[id(p)]
                if i not in loaded:
                    continue
                for name in names:
                    view = flat.view(self._buffers[group][name], k)
                    view[...] = loaded[i][name]
                    self.state[i][name] = view
                if self.counts_steps:
                    self.state[i]["step"] = loaded[i]["step"]
                self._updates[i] = loaded[i]["step"] if self.counts_steps else 1

    def _mismatch(self, what: str) -> ValueError:
        return ValueError(f"cannot load optimizer state into {type(self).__name__}: {what}")

    def _checked_state_dict(self, state_dict) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """The hyperparameters and, per parameter index, the state that ``state_dict`` holds,
        checked against this optimizer (arrays on the parameters' device); ValueError if not."""
        if not isinstance(state_dict, dict):
            raise self._mismatch(f"expected a dict from state_dict(), got {type(state_dict).__name__}")
        missing = [k for k in ("optimizer", "hyper", "num_params") if k not in state_dict]
        if missing:
            raise self._mismatch(f"missing key(s) {missing}; expected the dict that state_dict() returns")
        saved_type = str(state_dict["optimizer"])
        if saved_type != type(self).__name__:
            raise self._mismatch(f"the state was saved by {saved_type}, expected {type(self).__name__}")
        num_params = int(state_dict["num_params"])
        if num_params != len(self.params):
            raise self._mismatch(f"the state is for {num_params} parameters, this optimizer has {len(self.params)}")
        saved_hyper = dict(state_dict["hyper"])
        if set(saved_hyper) != set(self.hyper_names):
            raise self._mismatch(f"hyperparameters {sorted(saved_hyper)}, expected {sorted(self.hyper_names)}")
        hyper = self._checked_hyper(**saved_hyper)
        # Which state a parameter has depends on the hyperparameters being loaded
        # (momentum for SGD, amsgrad for Adam).
        expected_keys = self._state_keys(hyper)
        loaded: dict[int, dict[str, Any]] = {}
        for key, saved in dict(state_dict.get("state", {})).items():
            i = int(key)
            if not 0 <= i < len(self.params):
                raise self._mismatch(f"state for parameter {i}, but there are only {len(self.params)} parameters")
            if dict(saved):
                loaded[i] = self._checked_parameter_state(i, dict(saved), expected_keys)
        return hyper, loaded

    def _checked_parameter_state(self, i: int, saved: dict[str, Any], expected_keys: set[str]) -> dict[str, Any]:
        """Parameter i's saved state, checked: its keys, and each array's shape."""
        p = self.params[i]
        where = f"parameter {i} ({p.name or 'unnamed'})"
        if set(saved) != expected_keys:
            raise self._mismatch(f"{where} has state {sorted(saved)}, expected {sorted(expected_keys)}")
        xp = array_namespace(p.data)
        state = {}
        for k, value in saved.items():
            if k == "step":
                state[k] = int(value)
                continue
            shape = tuple(getattr(value, "shape", ()))
            if shape != tuple(p.data.shape):
                raise self._mismatch(f"{where}: {k!r} has shape {shape}, expected {tuple(p.data.shape)}")
            state[k] = xp.asarray(value, dtype=p.data.dtype, device=array_device(p.data))
        return state

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


def non_negative(name: str, value: Any) -> float:
    """``float(value)``, refused (with the hyperparameter's name) if negative or NaN."""
    value = float(value)
    if not value >= 0.0:  # also refuses NaN
        raise ValueError(f"invalid {name}: {value}; it must be >= 0")
    return value
