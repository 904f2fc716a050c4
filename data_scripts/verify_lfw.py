"""Count an LFW directory against the paper's protocol and check its SHA256SUMS (when present).

    python data_scripts/verify_lfw.py [DIR]      # DIR defaults to $DPACT_LFW_DIR, then data/lfw
Exit status 0 when the protocol counts (158 people / 4,324 images with >= 10 images) and checksums match.
"""
import argparse
import sys

from dpact_tf.data import resolve_lfw_dir
from dpact_tf.fetch import verify_lfw_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?")
    parser.add_argument("--no-checksums", action="store_true")
    args = parser.parse_args()
    report = verify_lfw_dir(resolve_lfw_dir(args.root), check_sums=not args.no_checksums)
    ev, pub = report["evaluation"], report["public"]
    print(f"directory:        {report['root']}")
    print(f"all:              {report['people']} people, {report['images']} images")
    print(f"evaluation (>=10): {ev[0]} people, {ev[1]} images (paper: {report['evaluation_expected'][0]} / "
          f"{report['evaluation_expected'][1]}) -> {'OK' if report['protocol_ok'] else 'MISMATCH'}")
    print(f"public (2..9):    {pub[0]} people, {pub[1]} images (complete LFW: {report['public_expected'][0]} / "
          f"{report['public_expected'][1]})")
    ok = report["protocol_ok"]
    if "checksums" in report:
        cs = report["checksums"]
        print(f"checksums:        {cs['checked']} checked, {len(cs['bad'])} bad" +
              (f" (first: {cs['bad'][:5]})" if cs["bad"] else ""))
        ok = ok and not cs["bad"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
