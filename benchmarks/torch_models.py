"""PyTorch twins of xpnet's models, for the ``--compare-torch`` benchmark.

Same layers, same shapes, same parameter order as ``models.LNet``, ``models.MLP`` and
``models.CNN`` (BatchNorm buffers included), so
a comparison measures the frameworks and not the architectures. torch is optional (the
``bench`` extra in pyproject.toml); this module imports it only when a model is built.
"""
from __future__ import annotations


def build_torch_model(name: str):
    """The torch.nn.Sequential equivalent of xpnet's ``build_model(name)``."""
    from torch import nn

    if name == "lnet":
        return nn.Sequential(
            nn.Conv2d(3, 6, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(6, 16, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 8 * 8, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, 1024),
            nn.ReLU(),
            nn.Linear(1024, 10),
        )
    if name == "cnn":
        layers = []
        for i, o in ((3, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                       nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.3),
                   nn.Linear(256, 10)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown model {name!r}; expected 'lnet', 'mlp' or 'cnn'")


def copy_xpnet_weights(xpnet_model, torch_model, to_numpy) -> None:
    """Copy every parameter of an xpnet model into its torch twin (used to check they match).

    ``to_numpy`` brings an xpnet array to the host (``backend.to_numpy``). Both models list
    their parameters in the same order and shapes (PyTorch's layout), which this checks.
    """
    import torch

    ours, theirs = xpnet_model.parameters(), list(torch_model.parameters())
    if len(ours) != len(theirs):
        raise ValueError(f"xpnet model has {len(ours)} parameters, torch model {len(theirs)}")
    with torch.no_grad():
        for mine, other in zip(ours, theirs):
            host = torch.from_numpy(to_numpy(mine.data).copy())
            if tuple(host.shape) != tuple(other.shape):
                raise ValueError(f"parameter {mine.name}: shape {tuple(host.shape)} vs torch {tuple(other.shape)}")
            other.copy_(host.to(other.dtype))
        buffers = dict(torch_model.named_buffers())
        for name, array in xpnet_model.named_buffers():  # BatchNorm's running statistics, same names
            if name not in buffers:
                raise ValueError(f"buffer {name} has no twin in the torch model")
            buffers[name].copy_(torch.from_numpy(to_numpy(array).copy()).to(buffers[name].dtype))
