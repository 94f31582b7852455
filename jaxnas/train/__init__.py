"""Training library: optimizers, jitted steps, checkpointed/resumable `fit`, `evaluate`.

    from jaxnas.train import fit, evaluate, OptimConfig, ScheduleConfig, TrainConfig
    state, history = fit(model, variables, dataset, workdir="runs/x", batch_size=128,
                         optim=OptimConfig(), schedule=ScheduleConfig(), train=TrainConfig(epochs=5))

Method searches run their own jitted `update_fn(state, batch, step)` through `run_loop`, which owns the
data order, exact resume, metrics, evaluation and checkpoints.
"""

from jaxnas.train.checkpoint import CheckpointError, CheckpointStore, load_variables, save_final, weights_source
from jaxnas.train.config import DistillConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxnas.train.loop import StepInfo, UpdateFn, evaluate, fit, run_loop
from jaxnas.train.metrics import CSV_FIELDS, MetricsWriter, read_metrics
from jaxnas.train.optim import make_optimizer, make_schedule, multi_optimizer, path_labels, weight_decay_mask
from jaxnas.train.parallel import check_batch_size, make_mesh, replicate, shard_batch
from jaxnas.train.progress import Progress
from jaxnas.train.state import TrainState, data_position
from jaxnas.train.steps import (
    Distillation, LossContext, classification_loss, cross_entropy, distillation_kl, eval_metrics, make_eval_step,
    make_train_step)

__all__ = [
    "CSV_FIELDS", "CheckpointError", "CheckpointStore", "DistillConfig", "Distillation", "LossContext", "MetricsWriter",
    "OptimConfig", "Progress", "ScheduleConfig", "StepInfo", "TrainConfig", "TrainState", "UpdateFn",
    "check_batch_size", "classification_loss", "cross_entropy", "data_position", "distillation_kl",
    "eval_metrics", "evaluate", "fit", "load_variables", "make_eval_step", "make_mesh", "make_optimizer",
    "make_schedule", "make_train_step", "multi_optimizer", "run_loop", "path_labels", "read_metrics", "replicate",
    "save_final", "shard_batch", "weight_decay_mask", "weights_source",
]
