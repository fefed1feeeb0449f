"""Optimizers: SGD, Adam and AdamW, with exactly the update rules of ``torch.optim``.

>>> opt = Adam(model.parameters(), lr=1e-3)
>>> loss.backward(); model.backward(dloss)   # fills every Parameter.grad
>>> opt.step()                                # updates every Parameter.data in place

Each rule below is the algorithm as torch.optim's documentation writes it, on arrays,
in place: ``param``, ``grad`` and the state arrays are whole flat buffers holding every
parameter at once (or, when some parameter has no gradient this step, a stretch of
them). How a rule runs (one fused kernel on a GPU, cache-sized blocks over the cores on
the CPU) is decided in one place, the base class in training/optim_base.py, and the
backend. The rules use only ``xp``, so they run unchanged on NumPy, CuPy and
array-api-strict; this module never imports numpy or cupy.

A rule must stay fusable (see backends/fusion.py): element-wise arithmetic only, numbers
as arguments, and ``if`` only on its keyword switches, never on an array or a number.
Every expression of numbers alone (1 - β1, γ/(1 - β1ᵗ)) is computed on the host, in the
optimizer's ``_step_arguments``, and passed in: CuPy would compute it in float16 inside a kernel.
"""
from __future__ import annotations

import math
from typing import Any

from .optim_base import Optimizer, non_negative


def sgd_update(xp, param, grad, momentum_buffer, lr, momentum, one_minus_dampening, weight_decay, *,
               decay: bool, with_momentum: bool, dampened: bool, nesterov: bool, first: bool) -> None:
    r"""One step of SGD, in place (torch.optim.SGD). With learning rate γ, weight decay λ,
    momentum μ, dampening τ and momentum buffer b::

        g ← g + λθ                               (decay)
        b ← g                                    (first step)
        b ← μb + (1 - τ)g                        (later steps)
        g ← g + μb  (nesterov),  else  g ← b     (with momentum)
        θ ← θ - γg

    ``one_minus_dampening`` is 1 - τ, computed on the host: inside a CuPy kernel arithmetic
    on numbers alone would run in float16 (see backends/fusion.py).
    """
    g = grad + weight_decay * param if decay else grad    # g ← g + λθ
    if with_momentum:
        b = momentum_buffer
        if first:
            b[...] = g                                    # b ← g
        else:
            b *= momentum
            b += one_minus_dampening * g if dampened else g   # b ← μb + (1 − τ)g
        g = g + momentum * b if nesterov else b           # g ← g + μb, or g ← b
    param -= lr * g                                       # θ ← θ − γg


def adam_update(xp, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1, beta2,
                one_minus_beta2, eps, weight_decay, decay_factor, step_size, bias_correction2_sqrt, *,
                decay: str, amsgrad: bool) -> None:
    r"""One step of Adam or AdamW, in place (torch.optim.Adam/AdamW). With learning rate γ,
    betas β1 and β2, weight decay λ, step t, moments m (exp_avg) and v (exp_avg_sq)::

        θ ← θ(1 - γλ)                                       (AdamW: decoupled decay)
        g ← g + λθ                                          (Adam: L2 decay)
        m ← β1 m + (1 - β1) g
        v ← β2 v + (1 - β2) g²
        v ← v_max ← max(v_max, v)                           (amsgrad)
        θ ← θ - γ m̂ / (√v̂ + ε),   m̂ = m/(1 - β1ᵗ),  v̂ = v/(1 - β2ᵗ)

    The last line is computed as torch computes it: (γ/(1 - β1ᵗ))·m / (√v/√(1 - β2ᵗ) + ε).
    The numbers come computed on the host (Adam._step_arguments): ``one_minus_beta1`` = 1 - β1,
    ``one_minus_beta2`` = 1 - β2, ``decay_factor`` = 1 - γλ, ``step_size`` = γ/(1 - β1ᵗ),
    ``bias_correction2_sqrt`` = √(1 - β2ᵗ). Inside a CuPy kernel, arithmetic on numbers
    alone would run in float16 (1 - 0.999 would be 0.00098), see backends/fusion.py.
    """
    if decay == "decoupled":
        param *= decay_factor                             # θ ← θ(1 − γλ)
    g = grad + weight_decay * param if decay == "l2" else grad   # g ← g + λθ
    m, v = exp_avg, exp_avg_sq
    m *= beta1
    m += one_minus_beta1 * g                              # m ← β1·m + (1 − β1)·g
    v *= beta2
    v += one_minus_beta2 * (g * g)                        # v ← β2·v + (1 − β2)·g²
    if amsgrad:
        max_exp_avg_sq[...] = xp.maximum(max_exp_avg_sq, v)
        v = max_exp_avg_sq                                # v ← v_max ← max(v_max, v)
    # Written in place, a step at a time: on the CPU every fresh array as large as the
    # model costs more than its arithmetic; on a GPU the whole rule is one fused kernel.
    denom = xp.sqrt(v)
    denom /= bias_correction2_sqrt
    denom += eps                                          # √v̂ + ε
    step = m / denom
    step *= step_size                                     # γ·m̂ / (√v̂ + ε)
    param -= step                                         # θ ← θ − γ·m̂ / (√v̂ + ε)


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    ``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``; the
    update is :func:`sgd_update`. The momentum buffer b is the per-parameter state
    ``"momentum_buffer"``.
    """

    rule = sgd_update
    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    @classmethod
    def _checked_hyper(cls, lr, momentum, dampening, weight_decay, nesterov):
        hyper = {
            "lr": non_negative("learning rate (lr)", lr),
            "momentum": non_negative("momentum", momentum),
            "dampening": float(dampening),
            "weight_decay": non_negative("weight_decay", weight_decay),
            "nesterov": bool(nesterov),
        }
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening = 0, "
                f"got momentum={hyper['momentum']}, dampening={hyper['dampening']}"
            )
        return hyper

    @classmethod
    def _array_state(cls, hyper):
        return ("momentum_buffer",) if hyper["momentum"] != 0 else ()

    def _step_arguments(self, step):
        # Numbers are combined here, on the host, in float64 (see sgd_update).
        numbers = (self.lr, self.momentum, 1 - self.dampening, self.weight_decay)
        with_momentum = self.momentum != 0
        return numbers, {"decay": self.weight_decay != 0, "with_momentum": with_momentum,
                         "dampened": self.dampening != 0, "nesterov": self.nesterov,
                         "first": with_momentum and step == 1}


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (weight decay added to the gradient, i.e. L2).

    ``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)``;
    the update is :func:`adam_update`. State per parameter: ``"step"``, ``"exp_avg"`` (m),
    ``"exp_avg_sq"`` (v) and, with amsgrad, ``"max_exp_avg_sq"``.
    """

    rule = adam_update
    hyper_names = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    counts_steps = True
    decoupled_weight_decay = False

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
            "lr": non_negative("learning rate (lr)", lr),
            "betas": betas,
            "eps": non_negative("epsilon value (eps)", eps),
            "weight_decay": non_negative("weight_decay", weight_decay),
            "amsgrad": bool(amsgrad),
        }

    @classmethod
    def _array_state(cls, hyper):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hyper["amsgrad"] else ())

    def _step_arguments(self, step: int) -> tuple[tuple, dict[str, Any]]:
        # Numbers are combined here, on the host, in float64 (see adam_update).
        beta1, beta2 = self.betas
        numbers = (beta1, 1 - beta1, beta2, 1 - beta2, self.eps, self.weight_decay, 1 - self.lr * self.weight_decay,
                   self.lr / (1 - beta1**step), math.sqrt(1 - beta2**step))
        decay = "none" if self.weight_decay == 0 else "decoupled" if self.decoupled_weight_decay else "l2"
        return numbers, {"decay": decay, "amsgrad": self.amsgrad}


class AdamW(Adam):
    r"""Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    The parameter is first shrunk, θ ← θ(1 - γλ), then takes a plain Adam step (no L2
    term in g); see :func:`adam_update`. Default weight decay λ = 1e-2. Same state as Adam.
    """

    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
