"""Download the public Keras VGG-Face weights (keras-vggface v2.0) and check them.

    python data_scripts/fetch_vggface_weights.py --dest data/vggface/rcmalli_vggface_tf_vgg16.h5 [--sha256 HEX]
keras-vggface publishes no checksum: the script prints the sha256 so you can pin it (--sha256) on the next
machine, and checks that every VGG-Face layer is present with the expected shapes. Load it with
dpact_tf.weights.load_vggface_weights(split, path) (width=1, fc_units=4096, 224x224 inputs).
"""
import argparse
import sys

from dpact_tf.fetch import VGGFACE_WEIGHTS_URL, fetch_vggface_weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="data/vggface/rcmalli_vggface_tf_vgg16.h5")
    parser.add_argument("--sha256", help="expected sha256 of the file")
    parser.add_argument("--url", default=VGGFACE_WEIGHTS_URL)
    args = parser.parse_args()
    info = fetch_vggface_weights(args.dest, sha256=args.sha256, url=args.url)
    print(f"{info['path']}: {info['parameters']} parameters, sha256 {info['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
