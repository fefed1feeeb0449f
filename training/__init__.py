"""Training xpnet models: data, optimizers, the Trainer, metrics, checkpoints and plots.

Import the parts directly (``from training.optim import SGD``); this package imports
nothing on its own, so ``training.optim`` stays free of any array library.
"""
