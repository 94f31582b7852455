"""Train and evaluate specs with the experiment config's recipe: the one trainer `jaxnas train`, the
quickstart and every method's retraining share.

    trainer = Trainer(cfg, dataset)
    result = trainer.train(spec, workdir / "retrain")          # resumable: kill -9, rerun, same weights
    result.variables, result.metrics["test"]["accuracy"]

`optim`, `schedule` and `train` come from the config; a method may change the epochs, the peak learning
rate, the evaluation split, add a teacher or wrap the optimizer (e.g. freeze some parameters).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import optax

    from jaxnas.config import ExperimentConfig
    from jaxnas.spec import ArchSpec

__all__ = ["Trainer", "TrainResult"]


@dataclasses.dataclass
class TrainResult:
    """Trained weights and their metrics: {'test': {...}} (and the eval split's last row as 'eval')."""

    variables: dict[str, Any]
    metrics: dict[str, Any]


class Trainer:
    """The core training service of an experiment (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, dataset: Any, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.dataset = dataset
        self.log = log or print

    def model(self, spec: ArchSpec) -> Any:
        from jaxnas import models

        return models.build_model(spec, self.cfg.model.depthwise)

    def teacher_from_config(self) -> tuple[ArchSpec, dict] | None:
        """The teacher `train.distill.teacher` names (a trained work dir), loaded."""
        path = self.cfg.train.distill.teacher
        if path is None or not self.cfg.train.distill.weight:
            return None
        from jaxnas.workdir import load_workdir

        return load_workdir(path)[1:]  # (spec, variables)

    def train(self, spec: ArchSpec, workdir: str | Path, *, variables: dict | None = None,
              epochs: float | None = None, learning_rate: float | None = None,
              teacher: tuple[ArchSpec, dict] | None = None, distill_weight: float | None = None,
              eval_split: str | None = "test", tx_fn: Callable[[optax.GradientTransformation], Any] | None = None,
              test: bool = True) -> TrainResult:
        """Train `spec` in `workdir` from `variables` (else a fresh init); resumes from its checkpoints.

        `eval_split` is evaluated every `train.eval_every_epochs` (None: never); `test` evaluates the final
        weights on the test split. `teacher` (spec, variables) distils with weight `distill_weight` (else
        `train.distill.weight`); without it the config's `train.distill.teacher` is used when set.
        """
        from jaxnas.models import init_variables
        from jaxnas.train import Distillation, fit, make_optimizer

        cfg = self.cfg
        train = cfg.train if epochs is None else cfg.train.replace(epochs=epochs)
        if eval_split is None:
            train = train.replace(eval_every_epochs=0.0)
        optim = cfg.optim if learning_rate is None else cfg.optim.replace(learning_rate=learning_rate)
        model = self.model(spec)
        if variables is None:
            variables = init_variables(model, cfg.train.seed)
        teacher = teacher if teacher is not None else self.teacher_from_config()
        distill = None
        weight = cfg.train.distill.weight if distill_weight is None else distill_weight
        if teacher is not None and weight > 0:
            distill = Distillation(teacher=self.model(teacher[0]), teacher_variables=teacher[1], weight=weight,
                                   temperature=cfg.train.distill.temperature)
        tx = None
        if tx_fn is not None:
            spe = self.dataset.steps_per_epoch("train", cfg.data.batch_size)
            total = max(1, int(round(train.epochs * spe)))
            tx = tx_fn(make_optimizer(optim, cfg.schedule, spe, total)[0])
        if eval_split == "holdout" and not self.dataset.num_examples("holdout"):
            eval_split = "test"
        state, rows = fit(model, variables, self.dataset, workdir=workdir, batch_size=cfg.data.batch_size,
                          optim=optim, schedule=cfg.schedule, train=train,
                          eval_batch_size=cfg.data.eval_batch_size, eval_split=eval_split or "test",
                          augment=cfg.data.augment, distill=distill, tx=tx, log=self.log)
        variables = state.variables()
        metrics: dict[str, Any] = {}
        evals = [r for r in rows if r.get("split") not in (None, "train")]
        if evals:
            metrics["eval"] = evals[-1]
        if test:
            metrics["test"] = self.evaluate(spec, variables, "test")
        return TrainResult(variables, metrics)

    def evaluate(self, spec: ArchSpec, variables: Any, split: str = "test") -> dict[str, float]:
        """Loss, accuracy and count of `spec` with `variables` over a split (eval-mode BN)."""
        from jaxnas.train import evaluate

        out = evaluate(self.model(spec), variables, self.dataset, split, self.cfg.data.eval_batch_size)
        return {k: float(v) for k, v in out.items()}
