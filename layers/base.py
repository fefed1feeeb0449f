"""Layer: the forward/backward contract every layer follows, and Sequential."""
from __future__ import annotations

from backends import Backend, get_backend

from .engine import Workspace
from .parameter import Parameter, flatten_parameters


class Layer:
    """Base class of every layer.

    ``forward(x)`` computes the output and keeps what ``backward`` needs;
    ``backward(dy)`` takes dL/d(output) and returns dL/d(input), setting ``grad`` on each
    of the layer's parameters. A layer lives on one backend (``cpu`` until ``to`` moves it)
    and in one floating dtype (float32 unless ``to`` casts it).
    """

    # Names of the layer's buffers: arrays that are state but not trained (BatchNorm's running
    # statistics). ``to`` moves them, checkpoints save them, optimizers never see them.
    buffer_names: tuple[str, ...] = ()

    def __init__(self):
        self.backend: Backend = get_backend("cpu")
        self.xp = self.backend.xp
        self.dtype = self.xp.float32
        self.training = True
        self._cache = None
        self.work = Workspace(self.backend)  # the engines' scratch memory (layers/engine.py)

    # -- the two passes ---------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def backward_params(self, dy) -> None:
        """Set the parameter gradients only, skipping dL/d(input).

        Used for a network's first layer, whose input gradient nobody needs. Layers whose
        input gradient is expensive (Conv2D, Linear) override this to skip computing it.
        """
        self.backward(dy)

    def __call__(self, x):
        return self.forward(x)

    # -- parameters and placement -------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        """(name, Parameter) of every Parameter attribute, in the order the layer assigned them.

        As in torch.nn.Module, a parameter is found wherever the layer keeps it, whatever
        its name: a learner's ``self.alpha = Parameter(...)`` is trained, saved and checked
        like Linear's ``weight`` and ``bias`` (assigned in that order, so weight comes
        first). An attribute set to None (``bias=False``) is no parameter; one Parameter
        held under two names is listed once, under the first.
        """
        found, seen = [], set()
        for attribute, value in vars(self).items():  # a dict keeps assignment order
            if isinstance(value, Parameter) and id(value) not in seen:
                seen.add(id(value))
                found.append((prefix + attribute, value))
        return found

    def parameters(self) -> list[Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> list[tuple[str, object]]:
        """(name, array) of each buffer (see ``buffer_names``), in a stable order."""
        return [(prefix + name, getattr(self, name)) for name in self.buffer_names]

    def layer_state(self) -> dict:
        """Host-side state a resumed run needs (a Dropout layer's step count), as plain numbers."""
        return {}

    def load_layer_state(self, state: dict) -> None:
        """Restore what ``layer_state`` returned."""

    def to(self, backend: Backend | str, dtype=None) -> "Layer":
        """Move the parameters to ``backend`` (and cast to ``dtype``); returns self."""
        target = get_backend(backend)
        new_dtype = target.dtype(dtype) if dtype is not None else target.dtype(_dtype_name(self.dtype))
        for parameter in self.parameters():
            host = self.backend.to_numpy(parameter.data)
            parameter.place(target.asarray(host, dtype=new_dtype))
        for name in self.buffer_names:
            setattr(self, name, target.asarray(self.backend.to_numpy(getattr(self, name)), dtype=new_dtype))
        self.backend, self.xp, self.dtype = target, target.xp, new_dtype
        self._cache = None
        self.work = Workspace(target)
        return self

    def train(self) -> "Layer":
        self.training = True
        return self

    def eval(self) -> "Layer":
        """Inference mode: forward keeps nothing for backward."""
        self.training = False
        self._cache = None
        return self

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of forward's output for an input of ``input_shape`` (used by summary)."""
        return tuple(input_shape)

    # -- helpers for subclasses ------------------------------------------------------------
    def _check_input(self, x, rank: int | None = None, expected: str = "") -> None:
        """Fail early, naming the layer, on input a layer cannot use correctly."""
        if not self.backend.is_array(x):
            raise TypeError(
                f"{self!r} is on backend '{self.backend.name}' but got {type(x).__module__}.{type(x).__name__}; "
                f"move the input with backend.asarray(...) or the model with .to(...)"
            )
        if x.dtype not in (self.xp.float32, self.xp.float64):
            raise TypeError(
                f"{self!r} expects a float32 or float64 input, got {x.dtype}; "
                f"convert images with xp.astype(x, xp.float32) (and normalise them) first"
            )
        if rank is not None and x.ndim != rank:
            raise ValueError(f"{self!r} expects input {expected}, got {tuple(x.shape)}")

    def _check_param_dtype(self, x) -> None:
        if x.dtype != self.dtype:
            raise TypeError(
                f"{self!r} has {_dtype_name(self.dtype)} weights but got a {x.dtype} input; "
                f"use model.to(backend, dtype='{_dtype_name(x.dtype)}') or cast the input"
            )

    def _engine_backward(self, engines, dy, need_dx: bool):
        """The backward pass of a layer with parameters, through the engine ``engines`` picks here.

        The engine gets what forward saved, the parameters (``_params()``) and their gradient
        buffers to write into; it returns dx (None when ``need_dx`` is false) and the gradients,
        which only the layer sets.
        """
        engine = engines.pick(self.backend)
        dx, grads = engine.backward(self.xp, dy, self._saved(), self._params(), self.work, need_dx,
                                    self._gradient_buffers())
        self._set_gradients(grads)
        return dx

    def _set_gradients(self, grads: dict) -> None:
        """Set each parameter's gradient from an engine's ``grads`` ({attribute name: array}).

        An engine that wrote a gradient straight into the buffer it was handed (``out``)
        returns that buffer, which then needs no copy.
        """
        for name, grad in grads.items():
            parameter = getattr(self, name)
            if grad is not parameter.grad_buffer():
                parameter.grad = grad

    def _gradient_buffers(self) -> dict:
        """{attribute name: gradient buffer} of each of the layer's parameters, for an engine's ``out``."""
        return {name: parameter.grad_buffer() for name, parameter in self.named_parameters()}

    def _saved(self):
        if self._cache is None:
            raise RuntimeError(
                f"{self!r}.backward called before forward (or after eval()); "
                f"call forward in training mode first"
            )
        return self._cache

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def check_positive(**sizes: int) -> None:
    """Refuse sizes (channels, features) that are not positive integers, naming the argument."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _dtype_name(dtype) -> str:
    """"float32" or "float64" for a float dtype object of any backend (else its own name)."""
    text = str(dtype)
    return next((name for name in ("float64", "float32") if name in text), text)


class Sequential(Layer):
    """Layers applied one after another: ``y = layer_n(...layer_1(x))``."""

    def __init__(self, *layers: Layer):
        super().__init__()
        self.layers = list(layers)
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes Layer objects, got {type(layer).__name__} at position {index}")
        self.flat = flatten_parameters(self.parameters())  # one buffer for all parameters (and one for gradients)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy, input_grad: bool = True):
        """Backpropagate ``dy`` through every layer; returns dL/dx, or None if not ``input_grad``.

        Without ``input_grad`` nothing below the first layer with parameters needs a
        gradient: that layer only sets its parameter gradients (``backward_params``), and
        the parameter-free layers before it (a Flatten, say) are not run at all.
        """
        first = 0
        if not input_grad:
            first = next((i for i, layer in enumerate(self.layers) if layer.parameters()), len(self.layers))
        for layer in reversed(self.layers[first + 1:]):
            dy = layer.backward(dy)
        if input_grad:
            return self.layers[0].backward(dy) if self.layers else dy
        if first < len(self.layers):
            self.layers[first].backward_params(dy)
        return None

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        found = []
        for index, layer in enumerate(self.layers):
            found.extend(layer.named_parameters(f"{prefix}{index}."))
        return found

    def named_buffers(self, prefix: str = "") -> list[tuple[str, object]]:
        found = []
        for index, layer in enumerate(self.layers):
            found.extend(layer.named_buffers(f"{prefix}{index}."))
        return found

    def layer_state(self) -> dict:
        """{layer index (a string, as in parameter names): that layer's state} for layers that have any."""
        return {str(index): state for index, layer in enumerate(self.layers) if (state := layer.layer_state())}

    def load_layer_state(self, state: dict) -> None:
        for index, layer in enumerate(self.layers):
            if str(index) in state:
                layer.load_layer_state(state[str(index)])

    def to(self, backend: Backend | str, dtype=None) -> "Sequential":
        for layer in self.layers:
            layer.to(backend, dtype)
        first = self.layers[0] if self.layers else Layer().to(backend, dtype)
        self.backend, self.xp, self.dtype = first.backend, first.xp, first.dtype
        self.flat = flatten_parameters(self.parameters())
        return self

    def train(self) -> "Sequential":
        for layer in self.layers:
            layer.train()
        self.training = True
        return self

    def eval(self) -> "Sequential":
        for layer in self.layers:
            layer.eval()
        self.training = False
        return self

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}(\n{inner}\n)"
