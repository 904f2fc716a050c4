"""Download LFW (official archive via its figshare mirror, or TFDS) and verify the protocol counts.

    python data_scripts/fetch_lfw.py --dest data/lfw                 # official lfw.tgz (sha256-checked)
    python data_scripts/fetch_lfw.py --dest data/lfw --source tfds   # TensorFlow Datasets' lfw
Then `export DPACT_LFW_DIR=$PWD/data/lfw` (the Makefile picks up data/lfw by itself).
"""
import argparse
import sys

from dpact_tf.fetch import LFW_ARCHIVES, export_tfds_lfw, fetch_lfw_archive, verify_lfw_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="data/lfw")
    parser.add_argument("--source", choices=["archive", "tfds"], default="archive")
    parser.add_argument("--variant", choices=list(LFW_ARCHIVES), default="lfw", help="archive variant")
    args = parser.parse_args()
    if args.source == "archive":
        fetch_lfw_archive(args.dest, variant=args.variant)
    else:
        export_tfds_lfw(args.dest)
    report = verify_lfw_dir(args.dest, check_sums=False)
    print(f"{report['root']}: {report['people']} people, {report['images']} images; "
          f">= 10 images: {report['evaluation'][0]} people / {report['evaluation'][1]} images "
          f"(protocol: {'OK' if report['protocol_ok'] else 'MISMATCH, expected ' + str(report['evaluation_expected'])})")
    return 0 if report["protocol_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
