"""Training xpnet models: optimizers, the Trainer, metrics, checkpoints and plots.

The data (datasets, batches, augmentation) is the sub-package ``training.data``.

Import the parts directly (``from training.optim import SGD``); this package imports
nothing on its own, so ``training.optim`` stays free of any array library.
"""
