"""Getting and checking the data on a connected machine: LFW archives, TFDS export, VGG-Face weights.

The scripts in ``data_scripts/`` are thin command lines over these functions.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from typing import Dict, Optional

from dpact_tf.data import PAPER_COUNTS, PUBLIC_COUNTS, scan_lfw_dir, select_people

__all__ = ["LFW_ARCHIVES", "VGGFACE_WEIGHTS_URL", "sha256_file", "download", "fetch_lfw_archive",
           "export_tfds_lfw", "verify_lfw_dir", "fetch_vggface_weights"]

# The official LFW archives as mirrored on figshare (the URLs and sha256 sums scikit-learn uses).
LFW_ARCHIVES: Dict[str, Dict[str, str]] = {
    "lfw": {"url": "https://ndownloader.figshare.com/files/5976018", "filename": "lfw.tgz",
            "sha256": "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0"},
    "funneled": {"url": "https://ndownloader.figshare.com/files/5976015", "filename": "lfw-funneled.tgz",
                 "sha256": "b47c8422c8cded889dc5a13418c4bc2abbda121092b3533a83306f90d900100a"},
}
# keras-vggface's converted VGG-Face (VGG16) weights. keras-vggface publishes no checksum: the fetch
# script prints the file's sha256 and accepts --sha256 to pin it; the loader then checks every layer shape.
VGGFACE_WEIGHTS_URL = "https://github.com/rcmalli/keras-vggface/releases/download/v2.0/rcmalli_vggface_tf_vgg16.h5"


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str, *, sha256: Optional[str] = None, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` (atomically) and check its sha256 when given."""
    from tqdm.auto import tqdm

    os.makedirs(os.path.dirname(os.path.abspath(dest)) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dest)), suffix=".part")
    try:
        with urllib.request.urlopen(url) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest), disable=not progress) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        if sha256 and sha256_file(tmp) != sha256:
            raise ValueError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {sha256_file(tmp)}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def fetch_lfw_archive(dest: str, *, variant: str = "lfw", keep_archive: bool = False) -> str:
    """Download and unpack an official LFW archive so that ``dest/<Person>/<Person>_NNNN.jpg`` exists."""
    if variant not in LFW_ARCHIVES:
        raise ValueError(f"variant must be one of {', '.join(LFW_ARCHIVES)} (got {variant!r})")
    meta = LFW_ARCHIVES[variant]
    archive = os.path.join(os.path.dirname(os.path.abspath(dest)), meta["filename"])
    if not os.path.exists(archive):
        download(meta["url"], archive, sha256=meta["sha256"])
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dest))) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        top = [d for d in os.listdir(tmp) if os.path.isdir(os.path.join(tmp, d))]
        if len(top) != 1:
            raise ValueError(f"unexpected archive layout: top-level folders {top}")
        if os.path.exists(dest):
            raise FileExistsError(f"{dest} exists; remove it or choose another --dest")
        shutil.move(os.path.join(tmp, top[0]), dest)
    if not keep_archive:
        os.remove(archive)
    return dest


def export_tfds_lfw(dest: str, *, data_dir: Optional[str] = None) -> str:
    """Write TFDS's ``lfw`` as JPEGs in the standard layout (for tools that want a directory)."""
    from PIL import Image
    import tensorflow_datasets as tfds

    counts: Dict[str, int] = {}
    for rec in tfds.as_numpy(tfds.load("lfw", split="train", data_dir=data_dir)):
        name = rec["label"].decode()
        counts[name] = counts.get(name, 0) + 1
        os.makedirs(os.path.join(dest, name), exist_ok=True)
        Image.fromarray(rec["image"]).save(os.path.join(dest, name, f"{name}_{counts[name]:04d}.jpg"), quality=95)
    return dest


def verify_lfw_dir(root: str, *, check_sums: bool = True) -> Dict[str, object]:
    """Counts of a directory for the protocol, and the result of its SHA256SUMS file when present."""
    people = scan_lfw_dir(root)
    ev = select_people(people, 10, None)
    pub = select_people(people, 2, 9)
    report: Dict[str, object] = {
        "root": os.path.abspath(root), "people": len(people), "images": sum(len(v) for v in people.values()),
        "evaluation": (len(ev), sum(len(v) for v in ev.values())), "public": (len(pub), sum(len(v) for v in pub.values())),
        "evaluation_expected": PAPER_COUNTS, "public_expected": PUBLIC_COUNTS,
    }
    report["protocol_ok"] = report["evaluation"] == PAPER_COUNTS
    sums = os.path.join(root, "SHA256SUMS")
    if check_sums and os.path.exists(sums):
        bad, checked = [], 0
        with open(sums) as fh:
            for line in fh:
                if not line.strip():
                    continue
                digest, rel = line.split(maxsplit=1)
                rel = rel.strip().lstrip("*")
                checked += 1
                path = os.path.join(root, rel)
                if not os.path.exists(path) or sha256_file(path) != digest:
                    bad.append(rel)
        report["checksums"] = {"checked": checked, "bad": bad}
    return report


def fetch_vggface_weights(dest: str, *, sha256: Optional[str] = None, url: str = VGGFACE_WEIGHTS_URL) -> Dict[str, str]:
    """Download the public VGG-Face weights, check the hash (when given) and every layer's shape."""
    import numpy as np

    from dpact_tf.weights import VGGFACE_LAYERS, read_keras_h5_weights

    download(url, dest, sha256=sha256)
    stored = read_keras_h5_weights(dest)
    missing = [l for l in VGGFACE_LAYERS if l not in stored]
    if missing:
        raise ValueError(f"{dest} lacks the VGG-Face layers {missing}")
    if stored["conv1_1"][0].shape != (3, 3, 3, 64) or stored["fc8"][0].shape != (4096, 2622):
        raise ValueError(f"{dest}: unexpected shapes conv1_1 {stored['conv1_1'][0].shape}, fc8 {stored['fc8'][0].shape}")
    params = sum(int(np.prod(a.shape)) for v in stored.values() for a in v)
    return {"path": dest, "sha256": sha256_file(dest), "parameters": str(params)}
