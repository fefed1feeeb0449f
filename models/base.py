"""Model: a named Sequential network with a summary table."""
from __future__ import annotations

from layers import Sequential


class Model(Sequential):
    """A Sequential network that names its parameters and can describe itself.

    ``input_shape`` is the shape of one example (C, H, W); ``name`` is the registry name
    saved in checkpoints, so a checkpoint of another model is recognised.
    """

    name = "model"
    input_shape: tuple[int, ...] = (3, 32, 32)
    num_classes = 10

    def __init__(self, *layers):
        super().__init__(*layers)
        for name, parameter in self.named_parameters():
            parameter.name = name

    def num_parameters(self) -> int:
        return sum(parameter.size for parameter in self.parameters())

    def summary(self, batch_size: int = 1) -> str:
        """A table of each layer, its output shape and its parameter count."""
        rows = [("layer", "output shape", "parameters")]
        shape = (batch_size, *self.input_shape)
        rows.append(("input", str(shape), ""))
        for index, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            count = sum(parameter.size for parameter in layer.parameters())
            rows.append((f"{index}: {layer!r}", str(shape), f"{count:,}" if count else "-"))
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        rule = "-" * (sum(widths) + 4)
        lines = [f"{type(self).__name__} ({self.name})", rule]
        for position, row in enumerate(rows):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
            if position == 0:
                lines.append(rule)
        lines += [rule, f"total parameters: {self.num_parameters():,}"]
        return "\n".join(lines)
