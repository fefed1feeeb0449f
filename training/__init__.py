"""Training xpnet models, by concern:

    data/        datasets, batches, augmentation
    optim.py, optim_base.py, schedules.py   the optimizers' update rules and learning-rate schedules
    loop/        the Trainer (epochs, steps, evaluation), its tallies and the metrics it computes
    saving/      what a run writes: checkpoints, metrics.json, the pictures, all written atomically
    run/         a whole run as library calls (RunConfig, train, evaluate, predict) and its plumbing:
                 the run folder, standard output whose reader may leave
    errors.py    the errors a user can cause; interrupts.py: Ctrl-C and SIGTERM (used by run/ and saving/)

Import the parts directly (``from training.optim import SGD``); this package imports
nothing on its own, so ``training.optim`` stays free of any array library.
"""
