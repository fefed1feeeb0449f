"""A run of xpnet as library calls: what ``python cli.py`` does, from Python (a notebook, a benchmark).

    from training.run import RunConfig, train, evaluate, predict
    result = train(RunConfig(model="lnet", epochs=3, train_size=2000, test_size=500, device="cpu", out="runs/a"))
    evaluation = evaluate("runs/a/best.npz")     # loss, accuracy, confusion on the run's test set
    prediction = predict("runs/a/best.npz", images)

The modules, in the order a run uses them:

    config.py     RunConfig: the settings, their defaults and the one check of each value
    checks.py     the settings and a checkpoint checked together, before any work
    folder.py     the run folder: a lock, and never another run's files unless told to overwrite
    prepare.py    the backend, data, model, optimizer and schedule made from the settings
    fit.py        train(): all of the above, then the Trainer (training/trainer.py)
    inference.py  evaluate() and predict() of a saved checkpoint
    streams.py    standard output whose reader may leave (``python cli.py | head``)

Errors are XpnetError with one clear message that names a setting as RunConfig does
(``'lr'``); cli.py names the same settings by their flags (``--lr``).
"""
from .config import RunConfig, SettingError
from .fit import RunInterrupted, RunResult, train
from .inference import Prediction, evaluate, predict

__all__ = ["RunConfig", "RunResult", "RunInterrupted", "SettingError", "Prediction", "train", "evaluate", "predict"]
