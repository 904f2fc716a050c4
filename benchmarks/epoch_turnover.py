"""Epoch turnover of the library's tf.data pipelines: seconds per epoch of the `small` profile's split training
(conv1 + DP noise on the client, the rest on the server, one evaluation per epoch) fed by ``make_dataset``, with
tf.data's autotuner off (the library's default, :func:`dpact_tf.data.without_autotune`) and on.

With the autotuner on, destroying an iterator -- every epoch's end and every evaluation -- waits for its model
thread's optimization pass; measured in the book's runs at `small`: ~4.5 s at the end of about half the 6-s epochs.
The pass's length depends on the machine's load, so the ratio varies between runs; it is > 1 when the autotuner
costs time.  Prints each setting's epochs, mean and worst, and the ratio of the means (on / off).
Run: python benchmarks/epoch_turnover.py [--epochs 8] [--images 3895]
"""
import argparse

import numpy as np
import tensorflow as tf

from dpact_tf.data import make_dataset
from dpact_tf.repro.profiles import get_profile
from dpact_tf.split import SplitTrainer, TrainingConfig
from dpact_tf.vggface import build_split_vggface


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--images", type=int, default=3895, help="training images (small's LFW split: 3895)")
    args = ap.parse_args()
    prof = get_profile("small")
    rng = np.random.default_rng(0)
    size = prof.image_size
    images = rng.integers(0, 256, size=(args.images + 429, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 158, size=len(images))
    means = {}
    for name in ("off", "on"):
        tf.keras.utils.set_random_seed(0)
        split = build_split_vggface(num_classes=158, epsilon=5.0, **prof.model_kwargs())
        trainer = SplitTrainer(split, TrainingConfig(learning_rate=prof.learning_rate, momentum=prof.momentum,
                                                     lr_decay_rate=prof.lr_decay_rate))
        train = make_dataset(images[:args.images], labels[:args.images], batch_size=prof.batch_size, shuffle=True)
        test = make_dataset(images[args.images:], labels[args.images:], batch_size=256)
        if name == "on":
            options = tf.data.Options()
            options.autotune.enabled = True
            train, test = train.with_options(options), test.with_options(options)
        seconds = trainer.fit(train, args.epochs, validation_data=test)["seconds"][1:]  # the first epoch traces
        means[name] = float(np.mean(seconds))
        print(f"autotune {name:3s}: mean {means[name]:.2f} s/epoch, worst {max(seconds):.2f} s "
              f"({', '.join(f'{s:.1f}' for s in seconds)})", flush=True)
    print(f"ratio on/off (mean epoch): {means['on'] / means['off']:.2f}")


if __name__ == "__main__":
    main()
