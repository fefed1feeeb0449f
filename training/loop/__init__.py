"""The training loop: ``trainer.py`` (Trainer: epochs of steps, evaluation, history), ``tally.py``
(sums kept on the device between reads) and ``metrics.py`` (accuracy, confusion, computed on the host).

Import the modules directly: ``from training.loop.trainer import Trainer``.
"""
