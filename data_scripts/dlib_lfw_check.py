"""Check dlib's face ResNet (dpact_tf.dlib_resnet, no dlib) on the local LFW and choose the crop of the 250x250 images.

    python data_scripts/dlib_lfw_check.py [--out dlib_lfw_check.json]

1. Crop: scores dpact_tf.dlib_faces.CROP_GRID by verification accuracy at dlib's threshold 0.6 on the public people
   with 5..9 images (all same-person pairs + as many random different-person pairs); fails unless the best is LFW_CROP.
2. Verification with LFW_CROP on the public people with 2..4 images (not used to choose the crop), also with
   mirror=True.
3. Nearest-class-mean accuracy on the 158-identity 9:1 split (train means, test images), on the 250x250 images and
   on the images as the small and paper profiles store them (64 px of the centre 0.6; 224 px of the centre 224/250).
Needs $DPACT_LFW_DIR (or data/lfw) and the model (data_scripts/fetch_dlib_model.py).

Measured on the complete deep-funneled LFW: best crop side 0.44, centre_y 0.53 (verification 0.9717 on 9,248
pairs; the grid spans 0.915..0.972); held-out verification 0.9726 on 5,548 pairs (0.9784 with mirror=True);
nearest class mean 0.9720 on 429 test images at 250 px, small (64 px) and paper (224 px) alike.  dlib reports
99.13 % (99.38 % with jittering) with its own 5-point alignment on LFW's official pairs.
"""
import argparse
import dataclasses
import json
import sys
import time

import numpy as np

from dpact_tf.data import load_lfw, load_lfw_public
from dpact_tf.dlib_faces import CROP_GRID, LFW_CROP, face_embeddings, score_crops
from dpact_tf.dlib_keras import load_face_resnet
from dpact_tf.face_verification import nearest_mean_accuracy, verification_pairs, verify_pairs


def _all(split):
    return np.concatenate([split.train_images, split.test_images]), np.concatenate([split.train_labels, split.test_labels])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    model = load_face_resnet()
    report = {}

    images, labels = _all(load_lfw_public(min_images_per_person=5, image_size=250, crop_fraction=1.0))
    start = time.perf_counter()
    scores = score_crops(images, labels, model, CROP_GRID)
    rate = len(images) * len(scores) / (time.perf_counter() - start)
    print(f"crop scores on {len(images)} public images (people with 5..9 images), {rate:.0f} images/s:")
    for s in scores:
        print(f"  side {s.crop.side:.2f} centre_y {s.crop.center_y:.2f}: verification {s.verification.accuracy:.4f} "
              f"(TA {s.verification.true_accept:.3f}, TR {s.verification.true_reject:.3f}, {s.verification.pairs} pairs)")
    best = max(scores, key=lambda s: s.verification.accuracy)
    report["crop_scores"] = [dataclasses.asdict(s) for s in scores]
    report["images_per_second"] = rate

    images, labels = _all(load_lfw_public(min_images_per_person=2, max_images_per_person=4, image_size=250,
                                          crop_fraction=1.0, strict=False))
    same, diff = verification_pairs(labels)
    held_out = verify_pairs(face_embeddings(images, model, normalize=False), same, diff, threshold=0.6)
    print(f"verification at 0.6 on the public people with 2..4 images ({held_out.pairs} pairs): "
          f"{held_out.accuracy:.4f} (TA {held_out.true_accept:.3f}, TR {held_out.true_reject:.3f}); chance 0.5")
    report["verification_public_2_4"] = dataclasses.asdict(held_out)
    mirrored = verify_pairs(face_embeddings(images, model, normalize=False, mirror=True), same, diff, threshold=0.6)
    print(f"  with mirror=True (descriptor averaged with the mirrored chip's): {mirrored.accuracy:.4f} "
          f"(TA {mirrored.true_accept:.3f}, TR {mirrored.true_reject:.3f})")
    report["verification_public_2_4_mirror"] = dataclasses.asdict(mirrored)

    report["nearest_mean_158"] = {}
    for name, size, fraction in (("250px", 250, 1.0), ("small", 64, 0.6), ("paper", 224, 224 / 250)):
        split = load_lfw(image_size=size, crop_fraction=fraction)
        tr = face_embeddings(split.train_images, model, source_crop_fraction=fraction)
        te = face_embeddings(split.test_images, model, source_crop_fraction=fraction)
        acc = nearest_mean_accuracy(tr, split.train_labels, te, split.test_labels)
        report["nearest_mean_158"][name] = acc
        print(f"nearest class mean, 158 people, {len(te)} test images, {name} ({size} px of the centre {fraction:.3f}): "
              f"{acc:.4f} (chance {1 / len(split.class_names):.4f})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
    if best.crop != LFW_CROP:
        print(f"the best crop is {best.crop}, not LFW_CROP {LFW_CROP}: update dpact_tf/dlib_faces.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
