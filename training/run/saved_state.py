"""The saved state a run continues from, checked like the weights before any work.

A checkpoint holds more than weights: the optimizer's hyperparameters and per-parameter
state (step counts, momentum buffers, Adam's moments) and the BatchNorm layers' running
statistics. A hand edit or a damaged disk can put there what no training writes, and the
math would then fail late and misleadingly: a negative step count is a math-domain error in
Adam's bias correction, an infinite second moment freezes its parameter for good, an lr of
0 trains nothing, a NaN running variance poisons every evaluation. Each such value gets one
error here that names the entry, in the ranges below:

====================================  ===================================================
entry                                  accepted
====================================  ===================================================
optimizer lr                           > 0 and finite (as ``--lr``); 0 too under a schedule
optimizer weight_decay                 [0, 1e4] (as ``--weight-decay``); lr × weight decay
                                       < 1 for SGD and AdamW, whose decay shrinks the weights
optimizer momentum                     [0, 1) (as ``--momentum``)
optimizer dampening                    [0, 1]
optimizer betas                        two numbers in [0, 1)
optimizer eps                          (0, 1]
optimizer nesterov, amsgrad            true or false
optim/<i>/step                         a whole number >= 0
layer_state <layer> step (Dropout)     a whole number >= 0
optim/<i>/exp_avg, momentum_buffer     finite
optim/<i>/exp_avg_sq, max_exp_avg_sq   finite and >= 0 (means of squares)
buffer/<layer>.running_mean            finite
buffer/<layer>.running_var             finite and >= 0 (the layer adds eps > 0 before the
                                       square root; a channel whose input never varies
                                       decays to exactly 0, so 0 is a state training writes)
====================================  ===================================================

The optimizer's own code (training/optim*.py) keeps its rules; these are the checkpoint's.
"""
from __future__ import annotations

import numpy as np

from ..errors import CheckpointError, setting
from .config import RULES

_EDITED = "the file was edited or damaged: use another checkpoint (best.npz or checkpoint.npz of a run)"


def check_saved_state(checkpoint, command: str) -> None:
    """Refuse saved state out of range: the running statistics for every command, the
    optimizer's hyperparameters and state and the layers' step counts also when resuming
    (``command`` "resume")."""
    for name, array in checkpoint.buffers.items():
        check_buffer(checkpoint.path, name, array)
    if command == "resume":
        for index, state in checkpoint.meta.get("layer_state", {}).items():
            check_layer_state(checkpoint.path, index, state)
    saved = checkpoint.meta.get("optimizer")
    if command == "resume" and saved is not None:
        check_hyperparameters(checkpoint.path, saved["name"], saved["hyper"], scheduled=checkpoint.schedule is not None)
        for index, entries in sorted(checkpoint.optim.items()):
            for key, value in entries.items():
                check_optimizer_entry(checkpoint.path, f"optim/{index}/{key}", key, value)


def check_buffer(path, name: str, array: np.ndarray) -> None:
    """A BatchNorm running mean must be finite; a running variance finite and >= 0."""
    entry = f"buffer/{name}"
    if not np.isfinite(array).all():
        raise CheckpointError(f"{path}: {entry} holds NaN or infinite values; {_EDITED}")
    if name.endswith("running_var") and (array < 0).any():
        raise CheckpointError(f"{path}: {entry} holds negative values, and a variance is never negative; {_EDITED}")


def check_layer_state(path, index: str, state: dict) -> None:
    """A layer's host-side state: a step count (Dropout's, the key of its random masks) is a whole number >= 0.
    Other keys are the layer's own to check (``load_layer_state``)."""
    step = state.get("step", 0)
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{path}: layer_state of layer {index} has step = {step!r}, expected a whole number >= 0 "
                              f"(the steps the layer has taken); {_EDITED}")


def check_optimizer_entry(path, entry: str, key: str, value: np.ndarray) -> None:
    """One array of the optimizer's per-parameter state (``key`` as in optim/<i>/<key>)."""
    if key == "step":
        if value.shape != () or value.dtype.kind not in "iu" or int(value) < 0:
            shown = value.tolist() if value.size <= 4 else f"an array of shape {value.shape}"
            raise CheckpointError(f"{path}: {entry} = {shown!r}, expected a whole number >= 0 (the updates taken); "
                                  f"{_EDITED}")
        return
    if value.dtype.kind != "f":
        raise CheckpointError(f"{path}: {entry} has dtype {value.dtype}, expected a float array; {_EDITED}")
    if not np.isfinite(value).all():
        raise CheckpointError(f"{path}: {entry} holds NaN or infinite values; {_EDITED}")
    if key in ("exp_avg_sq", "max_exp_avg_sq") and (value < 0).any():
        raise CheckpointError(f"{path}: {entry} holds negative values, and a mean of squared gradients is never "
                              f"negative; {_EDITED}")


def check_hyperparameters(path, optimizer: str, hyper: dict, scheduled: bool = False) -> None:
    """The saved hyperparameters, in the ranges the flags enforce (those without a flag: the math's).

    With a learning-rate schedule (``scheduled``) the saved lr is only the rate of the last
    step, which a cosine schedule can round to 0, and which the schedule replaces at the next
    step: it may then be 0."""
    def refuse(name: str, value, expected: str):
        raise CheckpointError(f"{path}: its optimizer state has {name} = {value!r}, expected {expected}; {_EDITED}")

    def is_real(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name, rule in (("lr", RULES["lr"]), ("weight_decay", RULES["weight_decay"]), ("momentum", RULES["momentum"])):
        if name == "lr" and scheduled and hyper.get(name) == 0 and is_real(hyper[name]):
            continue
        if name in hyper:
            problem = rule.problem(hyper[name])
            if problem:
                refuse(name, hyper[name], f"what {setting(name)} takes ({problem})")
    if "dampening" in hyper and not (is_real(hyper["dampening"]) and 0 <= hyper["dampening"] <= 1):
        refuse("dampening", hyper["dampening"], "a number in [0, 1]")
    if "eps" in hyper and not (is_real(hyper["eps"]) and 0 < hyper["eps"] <= 1):
        refuse("eps", hyper["eps"], "a number in (0, 1]")
    if "betas" in hyper:
        betas = hyper["betas"]
        if not (isinstance(betas, list) and len(betas) == 2 and all(is_real(b) and 0 <= b < 1 for b in betas)):
            refuse("betas", betas, "two numbers in [0, 1)")
    for name in ("nesterov", "amsgrad"):
        if name in hyper and not isinstance(hyper[name], bool):
            refuse(name, hyper[name], "true or false")
    shrinks = optimizer in ("SGD", "AdamW")  # their decay takes lr × weight decay of every weight each step
    lr, decay = hyper.get("lr"), hyper.get("weight_decay")
    if shrinks and is_real(lr) and is_real(decay) and not lr * decay < 1:
        refuse("weight_decay", decay, f"lr × weight decay below 1 (lr is {lr:g}; at 1 or more every step would flip "
                                      "the weights' sign)")
