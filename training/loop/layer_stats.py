"""A look inside training: per-layer statistics every few steps (``--layer-stats N``).

What a learner watches to see a network train well or badly (CS231n's "babysitting the
learning process"; Karpathy's "A Recipe for Training Neural Networks"):

* each layer's **activation** mean and standard deviation: a std that shrinks layer after
  layer towards 0 (or grows without bound) is vanishing (or exploding) signal; a ReLU
  layer whose outputs are all 0 has died;
* each layer's **gradient norm** ‖∂L/∂θ‖ over its parameters: gradients that vanish in the
  first layers, or explode;
* each parameter's **update-to-weight ratio** ‖Δθ‖/‖θ‖ of one optimizer step: about 1e-3
  is healthy; far above, the learning rate is too high; far below, too low.

Every ``every``-th step the trainer runs the forward through ``LayerStats.forward`` (the
same layers in the same order as ``Sequential.forward``, recording each output) and wraps
the optimizer step in ``before_update``/``after_update``. The numbers are computed on the
device as 0-d arrays and stacked into one row there: nothing is copied to the host inside
a step. ``read`` brings all of an epoch's rows back in one copy, once per epoch. Squared
norms are kept on the device; the square roots are taken on the host.
"""
from __future__ import annotations

import math

import numpy as np


class LayerStats:
    """Per-layer statistics of ``model`` (a Sequential) every ``every`` training steps.

    After ``read``: ``steps`` (the recorded steps, counted from 0 over the whole run) and
    ``as_dict()``, the JSON that metrics.json holds under ``layer_stats``.
    """

    def __init__(self, model, backend, every: int):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"layer statistics need a whole number of steps >= 1 between records, got {every!r}")
        self.model, self.backend, self.every = model, backend, every
        self.layer_names = [f"{index}: {type(layer).__name__}" for index, layer in enumerate(model.layers)]  # short, for legends
        self.layer_reprs = [repr(layer) for layer in model.layers]
        self.parameters = model.named_parameters()
        owner = {id(parameter): index for index, layer in enumerate(model.layers) for parameter in layer.parameters()}
        self.owners = [owner[id(parameter)] for _, parameter in self.parameters]  # the layer of each parameter
        self.steps: list[int] = []
        self._host_rows: list[np.ndarray] = []
        self._pending: list[tuple[int, object]] = []  # (step, row on the device) not read yet
        self._values: list = []  # this step's 0-d device arrays, in column order
        self._before: list = []  # this step's parameter values before the update
        self._earlier: dict | None = None  # a resumed run's statistics from before the resume

    def continue_from(self, saved, before_step: int) -> bool:
        """Keep a resumed run's earlier statistics (metrics.json's ``layer_stats``), those of steps before
        ``before_step``, so that the run's record stays whole. Statistics of another model or interval are
        not continued (returns False): the record then starts at the resume."""
        try:
            layers = saved["layers"]
            fits = (saved["every"] == self.every and [layer["name"] for layer in layers] == self.layer_names
                    and [list(layer["parameters"]) for layer in layers] == self._parameter_names())
            keep = sum(1 for step in saved["steps"] if step < before_step)
        except (KeyError, TypeError):
            fits = False
        if fits:
            self._earlier = _truncated(saved, keep)
        return fits

    def _parameter_names(self) -> list[list[str]]:
        return [[name for (name, _), owner in zip(self.parameters, self.owners) if owner == index]
                for index in range(len(self.layer_names))]

    def due(self, step: int) -> bool:
        """Whether ``step`` (0 for the first step of the run) is one to record."""
        return step % self.every == 0

    # -- inside a step: device arrays only -------------------------------------------------------
    def forward(self, x):
        """The model's forward, layer by layer as Sequential.forward, with each output's mean and std."""
        xp = self.backend.xp
        self._values = []
        for layer in self.model.layers:
            x = layer.forward(x)
            self._values += [xp.mean(x), xp.std(x)]
        return x

    def before_update(self) -> None:
        """After backward, before the optimizer: the gradients' squared norms and a copy of the weights."""
        xp = self.backend.xp
        for _, parameter in self.parameters:
            flat = xp.reshape(parameter.grad, (-1,))
            self._values.append(xp.vecdot(flat, flat))
        # One copy per flat buffer (all parameters at once) rather than one per parameter.
        self._before = [(flat, xp.asarray(flat.data, copy=True)) for flat in self._flats()]

    def after_update(self, step: int) -> None:
        """After the optimizer: each parameter's squared ‖Δθ‖ and ‖θ‖ (before the step); one row for the step."""
        xp = self.backend.xp
        for flat, before in self._before:
            change = flat.data - before
            for index in range(len(flat.parameters)):
                for buffer in (change, before):
                    values = flat.span(buffer, index, index)
                    self._values.append(xp.vecdot(values, values))
        self._pending.append((step, xp.stack(self._values)))
        self._values, self._before = [], []

    def _flats(self):
        flats = []
        for _, parameter in self.parameters:
            if parameter.flat is None:
                raise ValueError(f"layer statistics need the model's parameters in flat buffers; {parameter!r} is not "
                                 f"(build the model with models.Model or layers.Sequential)")
            if parameter.flat not in flats:
                flats.append(parameter.flat)
        if [p for flat in flats for p in flat.parameters] != [p for _, p in self.parameters]:
            raise ValueError("layer statistics need the flat buffers to hold the model's parameters in their order")
        return flats

    # -- once per epoch: one copy to the host ------------------------------------------------------
    def read(self) -> None:
        """Bring the rows recorded since the last read to the host, in one device-to-host copy."""
        if not self._pending:
            return
        rows = self.backend.to_numpy(self.backend.xp.stack([row for _, row in self._pending]))
        self.steps += [step for step, _ in self._pending]
        self._host_rows += list(np.asarray(rows, dtype=np.float64))
        self._pending = []

    def as_dict(self) -> dict:
        """The statistics as JSON: ``every``, ``steps``, and per layer its name ("0: Conv2D"), its repr
        (``layer``), activation mean and std, gradient norm and update-to-weight ratio (over its
        parameters; None for a layer without any), and the same two per parameter, by name."""
        layers_count, count = len(self.layer_names), len(self.parameters)
        table = np.array(self._host_rows, dtype=np.float64).reshape(len(self._host_rows), 2 * layers_count + 3 * count)
        grad_sq = table[:, 2 * layers_count:2 * layers_count + count]
        change_sq = table[:, 2 * layers_count + count::2]
        weight_sq = table[:, 2 * layers_count + count + 1::2]
        layers = []
        for index, name in enumerate(self.layer_names):
            mine = [k for k, owner in enumerate(self.owners) if owner == index]
            entry = {"name": name, "layer": self.layer_reprs[index], "activation_mean": _listed(table[:, 2 * index]),
                     "activation_std": _listed(table[:, 2 * index + 1]), "grad_norm": None, "update_ratio": None,
                     "parameters": {}}
            if mine:
                entry["grad_norm"] = _listed(np.sqrt(grad_sq[:, mine].sum(axis=1)))
                entry["update_ratio"] = _listed(_ratio(change_sq[:, mine].sum(axis=1), weight_sq[:, mine].sum(axis=1)))
                for k in mine:
                    entry["parameters"][self.parameters[k][0]] = {
                        "grad_norm": _listed(np.sqrt(grad_sq[:, k])),
                        "update_ratio": _listed(_ratio(change_sq[:, k], weight_sq[:, k])),
                    }
            layers.append(entry)
        document = {"every": self.every, "steps": list(self.steps), "layers": layers}
        return document if self._earlier is None else _joined(self._earlier, document)


SERIES = ("activation_mean", "activation_std", "grad_norm", "update_ratio")


def _truncated(saved: dict, keep: int) -> dict:
    """``saved`` with only its first ``keep`` records."""
    def cut(entry: dict) -> dict:
        return {key: value[:keep] if key in SERIES and value is not None else value for key, value in entry.items()}

    return {"every": saved["every"], "steps": saved["steps"][:keep],
            "layers": [dict(cut(layer), parameters={name: cut(series) for name, series in layer["parameters"].items()})
                       for layer in saved["layers"]]}


def _joined(earlier: dict, later: dict) -> dict:
    """The records of ``earlier`` followed by those of ``later`` (the same layers and parameters)."""
    def join(first: dict, second: dict) -> dict:
        return {key: (first[key] or []) + (second[key] or []) if key in SERIES and second[key] is not None
                else second[key] for key in second}

    layers = [dict(join(old, new), parameters={name: join(old["parameters"][name], series)
                                               for name, series in new["parameters"].items()})
              for old, new in zip(earlier["layers"], later["layers"])]
    return {"every": later["every"], "steps": earlier["steps"] + later["steps"], "layers": layers}


def _ratio(change_sq: np.ndarray, weight_sq: np.ndarray) -> np.ndarray:
    """‖Δθ‖/‖θ‖ from the squares; NaN where θ was all zeros (a ratio to nothing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight_sq > 0, np.sqrt(change_sq) / np.sqrt(np.where(weight_sq > 0, weight_sq, 1.0)), np.nan)


def _listed(values: np.ndarray) -> list:
    """Plain floats for JSON, with None where a value is not finite (JSON has no NaN)."""
    return [float(v) if math.isfinite(v) else None for v in values]
