"""Early stopping: the rule on a finished history, the callback, and SplitTrainer.fit honouring stop_training."""
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface
from dpact_tf.callbacks import Callback, EarlyStopping, stopping_epoch
from dpact_tf.split import SplitTrainer, TrainingConfig


@pytest.mark.parametrize("values, patience, min_delta, start, expected", [
    ([0.1, 0.2, 0.3, 0.3, 0.3], 2, 0.0, 0, 5),         # best at 3, two epochs without a better value
    ([0.1, 0.2, 0.3, 0.3, 0.31], 2, 0.0, 0, None),     # epoch 5 improves
    ([0.1, 0.2, 0.3, 0.3, 0.31], 2, 0.02, 0, 5),       # ... but not by more than min_delta
    ([0.1, 0.1, 0.1, 0.1, 0.1, 0.1], 2, 0.0, 0, 3),    # flat from the start
    ([0.1, 0.1, 0.1, 0.1, 0.1, 0.1], 2, 0.0, 3, 6),    # not monitored during the first 3 epochs
    ([0.1, 0.1, 0.1, 0.1, 0.5], 2, 0.0, 3, None),
])
def test_stopping_epoch(values, patience, min_delta, start, expected):
    assert stopping_epoch(values, patience=patience, min_delta=min_delta, start_from_epoch=start) == expected


def test_early_stopping_callback_matches_the_rule_and_checks_its_arguments():
    values = [0.1, 0.3, 0.2, 0.25, 0.29, 0.5]
    cb = EarlyStopping(patience=3)
    cb.on_train_begin(epochs=6, steps_per_epoch=1)
    for epoch in range(1, 7):
        cb.on_epoch_end(epoch, {"test_accuracy": values[:epoch]})
        if cb.stop_training:
            break
    assert cb.stopped_epoch == stopping_epoch(values, patience=3) == 5
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="validation_data"):
        EarlyStopping().on_epoch_end(1, {"loss": [1.0], "test_accuracy": []})


def test_fit_ends_after_the_epoch_a_callback_stops_it():
    class StopAt(Callback):
        def on_epoch_end(self, epoch, history):
            self.stop_training = epoch == 2

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    split = build_split_vggface((32, 32, 3), 2, width=1 / 16, fc_units=8)
    hist = SplitTrainer(split, TrainingConfig()).fit(ds, 5, callbacks=[StopAt()])
    assert hist["epoch"] == [1, 2]
