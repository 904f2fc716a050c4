"""The edge server's learning rate: the operator chooses what its decay counts.

SGD's rate decays exponentially, ``learning_rate x decay_rate ** progress``, as in the paper's in-process
training (:func:`dpact_tf.split.make_optimizer`).  With one phone, progress in steps and progress in epochs
are the same thing; with N phones sharing one server model they are not, and the operator picks:

* :class:`StepDecay` (``serve --decay per-step --decay-steps S``): progress = server steps / S, every client's
  steps counted, so any client's steps (batch-1 junk steps as well) lower every client's rate.  N phones that each train E epochs of B batches make N x E x B server steps; S must be set for
  that total (S = E x B, one phone's horizon, would decay N times too fast), and a phone that joins late
  trains at the rate the others have decayed to.
* :class:`EpochDecay` (``serve --decay per-epoch --decay-epochs E``, the default): the rate of a step is set by the epochs
  its own client has trained -- the images of that client's applied steps over the epoch size it declared at
  the handshake (``epoch_images``) -- so each phone's steps follow the schedule of a phone training alone for
  E epochs, whatever N is and whenever it joins.  A client's declaration changes only its own steps' rate,
  and never above ``learning_rate``.

Either way the rate a step was applied with is written to the journal with it, and a replay uses that number.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Union

__all__ = ["StepDecay", "EpochDecay", "Schedule"]


def _check(learning_rate: float, decay_rate: float, horizon: float, what: str) -> None:
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be finite and > 0 (got {learning_rate})")
    if not 0 < decay_rate <= 1:
        raise ValueError(f"decay_rate must be in (0, 1] (got {decay_rate})")
    if not (math.isfinite(horizon) and horizon > 0):
        raise ValueError(f"{what} must be finite and > 0 (got {horizon})")


@dataclasses.dataclass(frozen=True)
class StepDecay:
    """Decay over the server's steps, all clients together."""

    learning_rate: float  # rate of the first step
    decay_rate: float     # factor applied over decay_steps server steps
    decay_steps: float    # server steps (every client's) over which the rate decays by decay_rate
    needs_epoch_size = False

    def __post_init__(self) -> None:
        _check(self.learning_rate, self.decay_rate, self.decay_steps, "decay_steps")

    def rate(self, *, server_steps: int, client_images: int = 0, epoch_images: int = 0) -> float:
        """The rate of the step after ``server_steps`` updates."""
        return float(self.learning_rate * self.decay_rate ** (server_steps / self.decay_steps))


@dataclasses.dataclass(frozen=True)
class EpochDecay:
    """Decay over each client's own epochs of the data it declared."""

    learning_rate: float  # rate of a client's first step
    decay_rate: float     # factor applied over decay_epochs epochs of the client's data
    decay_epochs: float   # epochs (of each client's own data) over which the rate decays by decay_rate
    needs_epoch_size = True

    def __post_init__(self) -> None:
        _check(self.learning_rate, self.decay_rate, self.decay_epochs, "decay_epochs")

    def rate(self, *, server_steps: int = 0, client_images: int, epoch_images: int) -> float:
        """The rate of a client's next step after it trained ``client_images`` images of epochs of
        ``epoch_images``."""
        if epoch_images < 1:
            raise ValueError(f"a per-epoch schedule needs the client's epoch size (got {epoch_images})")
        return float(self.learning_rate * self.decay_rate ** (client_images / epoch_images / self.decay_epochs))


Schedule = Union[StepDecay, EpochDecay]
