"""Training SiT models: ``train(TrainConfig(...))``.

    presets.py   defaults chosen by the data (the digits quickstart, the paper's ImageNet settings)
    prepare.py   checks, the run folder, data, model, EMA, optimiser and RNG streams before step 1
    terms.py     what a step hands its loss terms, and the interface of a term
    losses.py    the loss as named terms (the interpolant's regression loss first)
    fewstep_losses.py  objectives fine-tuning a flow SiT into a few-step model (DMF, iMF, AlphaFlow)
    init_from.py  --init-from: the source checkpoint read and checked, a model started from its weights
    loop.py      the loop: step -> log -> save, and the two halves of a step
    state.py     EMA update, RNG states, the stop request of Ctrl-C / SIGTERM
    reports.py   progress bar, log.csv, loss.png, EMA sample grids, eval.csv / best.json
    loggers.py   TensorBoard and W&B (--log), one class each
    evaluation.py  FID of EMA samples during training (--eval-every)
"""

from sitcli.training.loop import TrainingDiverged, TrainResult, train
from sitcli.training.prepare import config_from_flags, resume_config

__all__ = ["train", "resume_config", "config_from_flags", "TrainResult", "TrainingDiverged"]
