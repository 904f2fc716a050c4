"""Callbacks of :meth:`dpact_tf.split.SplitTrainer.fit`: how a training run reports, the way ``keras.callbacks`` do.

The protocol itself writes no file and prints nothing; whoever runs it decides where progress and history go
by passing callbacks.  :class:`ProgressBar` shows a tqdm bar per epoch and one summary line per epoch on the
process's real stderr (the terminal that runs ``make book``; papermill echoes it there and the book drops it).
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, TextIO

__all__ = ["Callback", "ProgressBar", "EarlyStopping"]


class Callback:
    """Base class: override the hooks you need. ``history`` maps metric names to per-epoch lists."""

    def on_train_begin(self, *, epochs: int, steps_per_epoch: Optional[int]) -> None:
        pass

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_batch_end(self, step: int, logs: Dict[str, float]) -> None:
        """``logs``: running ``loss`` and ``accuracy`` of the epoch so far (only computed when a callback asks)."""

    def on_epoch_end(self, epoch: int, history: Dict[str, List[Any]]) -> None:
        pass

    def on_train_end(self, history: Dict[str, List[Any]]) -> None:
        pass

    #: set to True in a subclass that needs ``on_batch_end`` logs (costs a device sync per step)
    wants_batch_logs: bool = False

    #: a callback sets this to True in ``on_epoch_end`` to end training after that epoch (as in Keras)
    stop_training: bool = False


class ProgressBar(Callback):
    """A tqdm bar per epoch and a summary line per epoch, on ``stream`` (default: the process's real stderr)."""

    wants_batch_logs = True

    def __init__(self, description: str = "train", stream: Optional[TextIO] = None) -> None:
        self.description = description
        self.stream = stream or sys.__stderr__
        self._bar = None
        self._epochs = 0
        self._steps: Optional[int] = None

    def on_train_begin(self, *, epochs: int, steps_per_epoch: Optional[int]) -> None:
        self._epochs, self._steps = epochs, steps_per_epoch

    def on_epoch_begin(self, epoch: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self._steps, desc=f"{self.description} epoch {epoch}/{self._epochs}", leave=False,
                         file=self.stream, mininterval=1.0)

    def on_batch_end(self, step: int, logs: Dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['accuracy']:.3f}", refresh=False)

    def on_epoch_end(self, epoch: int, history: Dict[str, List[Any]]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        test = f", test acc {history['test_accuracy'][-1]:.3f}" if history.get("test_accuracy") else ""
        print(f"{self.description} epoch {epoch}/{self._epochs}: loss {history['loss'][-1]:.4f}, "
              f"train acc {history['train_accuracy'][-1]:.3f}{test} ({history['seconds'][-1]:.1f} s)",
              file=self.stream, flush=True)


class EarlyStopping(Callback):
    """Stops training once ``monitor`` has not improved for ``patience`` epochs.

    "Improved" means exceeding the best value so far by more than ``min_delta`` (the metric is maximized, as
    accuracies are).  The rule is the one :func:`stopping_epoch` applies to a finished history, so a run trained
    with this callback and a longer run cut by ``stopping_epoch`` stop at the same epoch.
    """

    def __init__(self, *, monitor: str = "test_accuracy", patience: int = 10, min_delta: float = 0.0,
                 start_from_epoch: int = 0) -> None:
        if int(start_from_epoch) != start_from_epoch or start_from_epoch < 0:
            raise ValueError(f"start_from_epoch must be a non-negative integer (got {start_from_epoch})")
        if int(patience) != patience or patience < 1:
            raise ValueError(f"patience must be a positive integer number of epochs (got {patience})")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0 (got {min_delta})")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.start_from_epoch = int(start_from_epoch)
        self.stopped_epoch: Optional[int] = None

    def on_train_begin(self, *, epochs: int, steps_per_epoch: Optional[int]) -> None:
        self.stop_training, self.stopped_epoch = False, None

    def on_epoch_end(self, epoch: int, history: Dict[str, List[Any]]) -> None:
        if self.monitor not in history or not history[self.monitor]:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which the history does not have "
                             f"(it has {sorted(k for k, v in history.items() if v)}); pass monitor_data to fit to "
                             "monitor validation_accuracy (validation_data: test_accuracy)")
        if stopping_epoch(history[self.monitor], patience=self.patience, min_delta=self.min_delta,
                          start_from_epoch=self.start_from_epoch) is not None:
            self.stop_training, self.stopped_epoch = True, epoch


def stopping_epoch(values: List[float], *, patience: int, min_delta: float = 0.0,
                   start_from_epoch: int = 0) -> Optional[int]:
    """The 1-based epoch at which early stopping ends training on ``values``, or None if it never does.

    Training stops after epoch ``b + patience``, where ``b`` is the epoch of the best value so far, as soon as no
    epoch in ``(b, b + patience]`` beat it by more than ``min_delta`` -- but never before ``start_from_epoch +
    patience`` (a network that sits at chance for its first epochs is not "converged"; as Keras'
    ``start_from_epoch``: the first ``start_from_epoch`` epochs are not monitored).
    """
    best, best_epoch = float("-inf"), start_from_epoch
    for epoch, value in enumerate(values, start=1):
        if epoch <= start_from_epoch:
            continue
        if value > best + min_delta:
            best, best_epoch = float(value), epoch
        elif epoch - best_epoch >= patience:
            return epoch
    return None
