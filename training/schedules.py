"""Learning-rate schedules, stepped once per batch, as pure functions of the step number.

>>> schedule = make_schedule("onecycle", lr=3e-3, total_steps=epochs * len(loader))
>>> for step in range(total_steps):
...     schedule.apply(optimizer, step)      # sets optimizer.lr (and momentum/β1 for onecycle)
...     ...; optimizer.step()

A schedule holds no state that changes: the rate at step t is ``lr_at(t)``, so the
position a resumed run needs is just the number of steps taken (the Trainer saves it in
the checkpoint). Setting the rate is a host-side number handed to the optimizer's kernel
as an argument: no device work, no recompilation.

The four schedules, with base rate η (``--lr``) and T total steps:

* ``constant``: η.
* ``step``: η, then η/10 from step ⌊T/2⌋ and η/100 from step ⌊3T/4⌋ (torch's MultiStepLR,
  milestones at 50 % and 75 %, gamma 0.1).
* ``cosine``: η·(1 + cos(π t / T))/2 (torch's CosineAnnealingLR with T_max = T, eta_min = 0).
* ``onecycle``: torch's OneCycleLR with its defaults and max_lr = η: from η/25 up to η over
  the first 30 % of the steps, then down to η/25/10⁴, both halves of a cosine; and, like
  torch (cycle_momentum), the momentum (SGD's momentum, Adam's β1) the other way, from 0.95
  down to 0.85 and back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "step", "cosine", "onecycle")


@dataclass(frozen=True)
class Schedule:
    """A learning rate (and optionally momentum) for each step ``0 <= t < total_steps``.

    Past the last step the schedule keeps its final value, so a run resumed for more
    epochs than planned trains on at the rate it ended with.
    """

    name: str
    lr: float
    total_steps: int

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {', '.join(SCHEDULES)}")
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(f"a schedule needs total_steps >= 1, got {self.total_steps!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"a schedule needs a positive finite lr, got {self.lr!r}")

    def lr_at(self, step: int) -> float:
        t, total, lr = min(step, self.total_steps - 1), self.total_steps, self.lr
        if self.name == "constant":
            return lr
        if self.name == "step":
            return lr * 0.1 ** ((t >= total // 2) + (t >= (3 * total) // 4))
        if self.name == "cosine":
            return lr * (1 + math.cos(math.pi * t / total)) / 2
        return _one_cycle(t, total, start=lr / DIV_FACTOR, peak=lr, end=lr / DIV_FACTOR / FINAL_DIV_FACTOR)

    def momentum_at(self, step: int) -> float | None:
        """The momentum (β1 for Adam) onecycle sets at ``step``; None for the other schedules."""
        if self.name != "onecycle":
            return None
        t = min(step, self.total_steps - 1)
        return _one_cycle(t, self.total_steps, start=MAX_MOMENTUM, peak=BASE_MOMENTUM, end=MAX_MOMENTUM)

    def apply(self, optimizer, step: int) -> None:
        """Set ``optimizer``'s hyperparameters for ``step`` (before its ``step()``)."""
        optimizer.lr = self.lr_at(step)
        momentum = self.momentum_at(step)
        if momentum is None:
            return
        if hasattr(optimizer, "betas"):
            optimizer.betas = (momentum, optimizer.betas[1])
        elif hasattr(optimizer, "momentum"):
            optimizer.momentum = momentum

    def state_dict(self) -> dict:
        return {"name": self.name, "lr": self.lr, "total_steps": self.total_steps}


# torch.optim.lr_scheduler.OneCycleLR's defaults
PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.3, 25.0, 1e4
BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95


def _cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` (fraction 0) to ``end`` (fraction 1) along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)


def _one_cycle(t: int, total: int, start: float, peak: float, end: float) -> float:
    """OneCycleLR's two phases, as torch computes them: up from ``start`` to ``peak`` until step
    PCT_START·T - 1, then down to ``end`` at step T - 1."""
    up_end = float(PCT_START * total) - 1
    if t <= up_end:
        return _cosine(start, peak, t / up_end)
    return _cosine(peak, end, (t - up_end) / (total - 1 - up_end))


def make_schedule(name: str, lr: float, total_steps: int) -> Schedule:
    """The schedule ``name`` (one of SCHEDULES) over ``total_steps`` batches with base rate ``lr``."""
    return Schedule(name, float(lr), int(total_steps))
