"""The explicit training state: one pytree that is checkpointed as a whole."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

TRAINED_COLLECTIONS = ("params", "batch_stats")


@flax.struct.dataclass
class TrainState:
    """params, BN running stats, optimizer state, step counter and base PRNG key.

    The optimizer itself is not part of the state; step functions close over it.
    `rng` is a fixed base key: step `i` uses `fold_in(rng, i)`, so a resumed run
    draws the same randomness as an uninterrupted one.
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array

    @classmethod
    def create(cls, variables: Any, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
        """A step-0 state from model variables {'params', ['batch_stats']}."""
        extra = sorted(set(variables) - set(TRAINED_COLLECTIONS))
        if extra:
            raise ValueError(f"training handles the collections {TRAINED_COLLECTIONS}; got also {extra}")
        params = variables["params"]
        return cls(
            params=params,
            batch_stats=dict(variables.get("batch_stats", {})),
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.PRNGKey(seed),
        )

    def variables(self) -> dict[str, Any]:
        """Model variables for `model.apply` (no 'batch_stats' entry when the model has none)."""
        out = {"params": self.params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


def data_position(step: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, step within epoch) of the batch consumed by global step `step`."""
    return divmod(int(step), int(steps_per_epoch))
