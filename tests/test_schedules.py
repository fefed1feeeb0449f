"""Learning-rate schedules (training/schedules.py) against torch.optim.lr_scheduler."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.schedules import SCHEDULES, make_schedule


def torch_rates(name, lr, total, optimizer_name):
    """(lr, momentum-or-β1) at each step, from torch's own scheduler driving a torch optimizer."""
    torch = pytest.importorskip("torch")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = (torch.optim.Adam([parameter], lr=lr) if optimizer_name == "adam"
                 else torch.optim.SGD([parameter], lr=lr, momentum=0.9))
    scheduler = {
        "step": lambda: torch.optim.lr_scheduler.MultiStepLR(optimizer, [total // 2, (3 * total) // 4], gamma=0.1),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total),
        "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total),
        "constant": lambda: None,
    }[name]()
    rates = []
    for _ in range(total):
        group = optimizer.param_groups[0]
        rates.append((group["lr"], group["betas"][0] if optimizer_name == "adam" else group["momentum"]))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return rates


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("total", [1, 7, 40, 313])
def test_schedules_match_torch(name, total):
    schedule = make_schedule(name, 3e-3, total)
    for optimizer_name in ("adam", "sgd"):
        for step, (lr, momentum) in enumerate(torch_rates(name, 3e-3, total, optimizer_name)):
            assert schedule.lr_at(step) == pytest.approx(lr, rel=1e-12, abs=1e-18), (name, step)
            if name == "onecycle":
                assert schedule.momentum_at(step) == pytest.approx(momentum, rel=1e-12), (step, optimizer_name)


def test_schedule_shapes():
    """The documented shape: onecycle from lr/25 to lr at 30 %, then down to lr/25/1e4; step at 50 %, 75 %."""
    onecycle, step, cosine = (make_schedule(n, 1.0, 100) for n in ("onecycle", "step", "cosine"))
    assert onecycle.lr_at(0) == pytest.approx(1 / 25) and onecycle.lr_at(29) == pytest.approx(1.0)
    assert onecycle.lr_at(99) == pytest.approx(1 / 25 / 1e4)
    assert max(onecycle.lr_at(t) for t in range(100)) == pytest.approx(1.0)
    assert [step.lr_at(t) for t in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert cosine.lr_at(50) == pytest.approx(0.5) and cosine.lr_at(99) == pytest.approx((1 + math.cos(math.pi * 0.99)) / 2)
    assert cosine.lr_at(500) == cosine.lr_at(99)  # past its end a schedule keeps its last rate


def test_apply_sets_the_optimizer_for_the_step():
    from backends import get_backend
    from layers import Parameter
    from training.optim import SGD, Adam

    def parameter():
        return Parameter(get_backend("cpu").asarray(np.zeros(3), dtype="float32"))

    adam, sgd = Adam([parameter()], lr=1.0), SGD([parameter()], lr=1.0, momentum=0.9)
    schedule = make_schedule("onecycle", 0.5, 10)
    schedule.apply(adam, 4)
    schedule.apply(sgd, 4)
    assert adam.lr == sgd.lr == schedule.lr_at(4)
    assert adam.betas == (schedule.momentum_at(4), 0.999) and sgd.momentum == schedule.momentum_at(4)
    make_schedule("cosine", 0.5, 10).apply(sgd, 3)
    assert sgd.momentum == schedule.momentum_at(4)  # only onecycle touches the momentum


@pytest.mark.parametrize("name, lr, total, message", [
    ("linear", 0.1, 10, "unknown schedule 'linear'"), ("cosine", 0.1, 0, "total_steps >= 1"),
    ("cosine", -1.0, 10, "positive finite lr"),
])
def test_bad_schedules_are_refused(name, lr, total, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(name, lr, total)
