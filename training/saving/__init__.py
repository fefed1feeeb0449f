"""What a run writes to disk: ``checkpoint.py`` (.npz without pickle), ``metrics_file.py``
(metrics.json), ``plots.py`` (curves, confusion, mistakes, filters as PNG), each file written
whole or not at all by ``atomic.py``.

Import the modules directly: ``from training.saving.checkpoint import load_checkpoint``.
"""
