"""Export the client head (conv layers -> clip -> Eq. (1) -> the grid release) to a builtin-ops-only .tflite.

    python tflite/convert.py --seed 0 --image-size 224 --out build/head.tflite            # fresh weights (the seed
                                                                                          # sets weights only)
    python tflite/convert.py --weights results/small/lfw/scratch/<key>.client.h5 \\
        --image-size 64 --width 0.125 --out build/head.tflite                               # a trained client
    python tflite/convert.py --weights client.keras --out build/head.tflite               # a saved Keras client

Writes head.tflite (signatures `release`, `clean` and, for the conv1_1 cut, `train`, `gradient`, `apply_gradient`)
and head.json beside it: the epsilons the head certifies, its grid, and the SHA-256 of the conv weights it stores.
"""
import argparse
import sys

from dpact_tf.deploy.convert import client_for_export, convert_client_head
from dpact_tf.grid import STEPS_PER_STD
from dpact_tf.privacy import PAPER_SENSITIVITY


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="trained client: .keras model or .h5 weights (loaded by layer name)")
    parser.add_argument("--seed", type=int, default=0, help="initialization seed when no --weights are given")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cut", default="conv1_1")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--sensitivity", type=float, default=PAPER_SENSITIVITY)
    parser.add_argument("--steps-per-std", type=int, default=STEPS_PER_STD,
                        help="grid steps per noise std (more steps certify smaller epsilons)")
    parser.add_argument("--no-train", action="store_true",
                        help="inference only: no on-device training signatures; the weights become constants "
                             "(faster under XNNPACK)")
    parser.add_argument("--out", default="build/head.tflite")
    args = parser.parse_args()
    client = client_for_export(image_size=args.image_size, cut=args.cut, width=args.width, seed=args.seed,
                               weights=args.weights, delta=args.delta, sensitivity=args.sensitivity)
    meta = convert_client_head(client, args.out, with_train=not args.no_train, steps_per_std=args.steps_per_std)
    lo, hi = meta["release"]["certified_epsilons"]
    print(f"{args.out}: {meta['bytes'] / 1024:.1f} KiB, signatures {meta['signatures']}, input {meta['input']['shape']} "
          f"uint8, activation {meta['activation_shape']}, delta {meta['delta']:g}, S_f {meta['sensitivity']:.4f}, "
          f"{meta['release']['steps_per_std']} grid steps per std, certified epsilons [{lo:.4f}, {hi:.4f}], "
          f"weights sha256 {meta['weights_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
