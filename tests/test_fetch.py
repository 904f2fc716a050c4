import hashlib

from dpact_tf.fetch import LFW_ARCHIVES, sha256_file, verify_lfw_dir
from tests.test_data import COUNTS, _write_tree


def test_verify_counts_and_checksums(tmp_path):
    root = _write_tree(tmp_path / "lfw", COUNTS)
    files = sorted(p for p in root.rglob("*.jpg"))
    lines = [f"{sha256_file(str(p))}  {p.relative_to(root)}" for p in files]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    report = verify_lfw_dir(str(root))
    assert report["evaluation"] == (3, 42) and report["public"] == (2, 7)
    assert not report["protocol_ok"]  # a fake tree is not the paper's 158 / 4324
    assert report["checksums"] == {"checked": len(files), "bad": []}
    files[0].write_bytes(b"tampered")
    assert verify_lfw_dir(str(root))["checksums"]["bad"] == [str(files[0].relative_to(root))]


def test_sha256_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(str(p)) == hashlib.sha256(b"abc").hexdigest()
    assert all(len(m["sha256"]) == 64 for m in LFW_ARCHIVES.values())
