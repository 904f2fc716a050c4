"""Where the reproduction keeps its results, how cached results are keyed, and how they are written.

The one module that owns these three things:

* **paths** -- ``<results_dir>/<profile>/<dataset>/<study>/...``; ``results_dir=None`` means ``$DPACT_RESULTS_DIR``,
  else ``results/`` at the repository root (found from this file, not from the working directory, so a
  notebook opened in Jupyter from ``notebooks/`` finds the same cache as ``make book``);
* **cache keys** -- a hash of a run's configuration *and* of the source code of the modules that compute it
  (:func:`code_fingerprint`), so a code change can never serve a stale result;
* **JSON** -- :func:`record_metrics` / :func:`load_metrics` for the metrics the chapters record (written with
  :func:`dpact_tf.jsonio.write_json`, atomically).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from typing import Any, Dict, Optional, Sequence

from dpact_tf.jsonio import write_json
from dpact_tf.repro.profiles import get_profile

__all__ = ["REPO", "resolve_results_dir", "study_dir", "record_metrics", "load_metrics",
           "no_noise_final", "code_fingerprint", "cache_key", "TRAINING_MODULES", "PRETRAIN_MODULES", "relative_to_repo"]

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))

# The modules whose code determines what a training run computes (their source is part of its cache key).  The
# profile's settings that change a run are part of its configuration instead (Profile.training_settings), so
# editing a study's schedule in dpact_tf.repro.profiles keeps the runs it does not change.
TRAINING_MODULES = ("dpact_tf.privacy", "dpact_tf.grid", "dpact_tf.grid_tf", "dpact_tf.layers", "dpact_tf.vggface",
                    "dpact_tf.split", "dpact_tf.training", "dpact_tf.callbacks", "dpact_tf.data",
                    "dpact_tf.synthetic", "dpact_tf.repro.runs")
# ... and of the public model, trained with its own recipe (augmentation, Keras fit) by dpact_tf.repro.pretrain.
PRETRAIN_MODULES = (*TRAINING_MODULES, "dpact_tf.augment", "dpact_tf.repro.pretrain")


def resolve_results_dir(results_dir: Optional[str] = None) -> str:
    """``results_dir`` as given, else ``$DPACT_RESULTS_DIR``, else ``<repository>/results``."""
    if results_dir:
        return os.path.abspath(results_dir)
    env = os.environ.get("DPACT_RESULTS_DIR")
    if env:
        return os.path.abspath(env)
    if os.path.exists(os.path.join(REPO, "_toc.yml")):
        return os.path.join(REPO, "results")
    return os.path.abspath("results")  # an installed package outside the repository


def relative_to_repo(path: str) -> str:
    """A path as a reader should see it: relative to the repository (never the machine's absolute path)."""
    try:
        rel = os.path.relpath(path, REPO)
    except ValueError:
        return os.path.basename(path)
    return rel if not rel.startswith(os.pardir) else os.path.basename(path)


def study_dir(results_dir: Optional[str], profile: str, dataset: str, *parts: str) -> str:
    path = os.path.join(resolve_results_dir(results_dir), get_profile(profile).name, dataset, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def record_metrics(results_dir: Optional[str], profile: str, dataset: str, name: str, payload: Dict[str, Any]) -> str:
    path = os.path.join(study_dir(results_dir, profile, dataset, "metrics"), f"{name}.json")
    payload = {"study": name, "profile": profile, "dataset": dataset, "synthetic": dataset == "synthetic", **payload}
    return write_json(path, payload)


def load_metrics(results_dir: Optional[str], profile: str, dataset: str, name: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(resolve_results_dir(results_dir), get_profile(profile).name, dataset, "metrics",
                        f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def no_noise_final(results_dir: Optional[str], profile: str, dataset: str, name: str) -> Optional[float]:
    """The final test accuracy of the no-noise run in the recorded ``table`` of study ``name`` (``scratch``,
    ``finetune``); None when the study is not recorded or has no such run."""
    rows = [r for r in (load_metrics(results_dir, profile, dataset, name) or {}).get("table", [])
            if r["epsilon"] is None]
    return float(rows[0]["final_test_accuracy"]) if rows else None


@functools.lru_cache(maxsize=None)
def _module_source_hash(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        raise ValueError(f"cannot fingerprint {module!r}: its source file was not found")
    with open(spec.origin, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def code_fingerprint(modules: Sequence[str]) -> str:
    """A hash of the source code of ``modules`` (dotted names): changes whenever one of them is edited."""
    h = hashlib.sha256()
    for module in sorted(set(modules)):
        h.update(module.encode())
        h.update(_module_source_hash(module).encode())
    return h.hexdigest()[:16]


def cache_key(config: Dict[str, Any], *, modules: Sequence[str]) -> str:
    """The cache key of a result: its configuration plus the fingerprint of the code that computes it."""
    payload = json.dumps({"config": config, "code": code_fingerprint(modules)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
