"""Reproduce and render the book: ``python -m dpact_tf.book run|build`` (what ``make book`` calls).

``run`` executes every notebook of :data:`NOTEBOOKS` with papermill at one profile into ``book/executed/``;
the notebooks cache their training runs under ``results/<profile>/`` so a second ``run`` only re-renders.
``build`` renders the Jupyter Book (notebook execution off, warnings as errors) into ``_build/html``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from dpact_tf.config import get_profile

__all__ = ["NOTEBOOKS", "run_notebooks", "build_book", "resolve_dataset", "main"]

# Execution order matters: the fine-tuning notebook uses the pre-trained model, the cost chapter the benchmark.
NOTEBOOKS: List[str] = ["01_activations", "02_scratch", "03_finetune", "04_partition", "05_mobile_cost",
                         "06_accounting", "07_attacks", "08_discussion"]

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def resolve_dataset(dataset: str) -> str:
    """``auto`` -> ``lfw`` when an LFW directory is configured, else stop with instructions."""
    if dataset in ("lfw", "synthetic"):
        return dataset
    if dataset != "auto":
        raise ValueError(f"dataset must be 'auto', 'lfw' or 'synthetic' (got {dataset!r})")
    from dpact_tf.data import LFWNotFoundError, resolve_lfw_dir

    try:
        resolve_lfw_dir(None)
    except LFWNotFoundError as err:
        raise SystemExit(f"make book: {err}\nTo render the book without LFW anyway: make book DATASET=synthetic "
                         "(every figure and result is then labelled 'synthetic').") from None
    return "lfw"


def run_notebooks(*, profile: str, dataset: str, out_dir: str, results_dir: str, force: bool = False,
                  epsilons: Optional[Sequence[Optional[float]]] = None, only: Optional[Sequence[str]] = None,
                  notebook_dir: Optional[str] = None) -> Dict[str, float]:
    """Execute the notebooks with papermill; returns seconds per notebook."""
    import papermill as pm

    prof = get_profile(profile)
    dataset = resolve_dataset(dataset)
    notebook_dir = notebook_dir or os.path.join(REPO, "notebooks")
    os.makedirs(out_dir, exist_ok=True)
    params = {"profile": prof.name, "dataset": dataset, "results_dir": os.path.abspath(results_dir),
              "force": bool(force), "seed": 0}
    if epsilons is not None:
        params["epsilons"] = list(epsilons)
    timings: Dict[str, float] = {}
    names = [n for n in NOTEBOOKS if not only or n in only]
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] executing notebooks/{name}.ipynb (profile={prof.name}, dataset={dataset})",
              flush=True)
        start = time.perf_counter()
        pm.execute_notebook(os.path.join(notebook_dir, f"{name}.ipynb"), os.path.join(out_dir, f"{name}.ipynb"),
                            parameters=params, kernel_name="python3", progress_bar=False, log_output=True,
                            cwd=REPO)
        timings[name] = time.perf_counter() - start
        print(f"[{i}/{len(names)}] {name}: {timings[name]:.0f} s", flush=True)
    return timings


def build_book(root: str = REPO, builddir: Optional[str] = None) -> str:
    """Render the book with warnings as errors; returns the HTML directory."""
    jb = shutil.which("jupyter-book", path=os.path.dirname(sys.executable)) or "jupyter-book"
    cmd = [jb, "build", root, "--warningiserror", "--nitpick", "--quiet"]
    if builddir:
        cmd += ["--path-output", builddir]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    html = os.path.join(builddir or root, "_build", "html")
    print(f"The book is at {os.path.join(html, 'index.html')}")
    return html


def _parse_eps(values: Sequence[str]) -> List[Optional[float]]:
    return [None if v.lower() in ("none", "baseline", "inf") else float(v) for v in values]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpact_tf.book", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the notebooks with papermill")
    r.add_argument("--profile", default="small")
    r.add_argument("--dataset", default="auto", help="auto (LFW when found), lfw or synthetic")
    r.add_argument("--force", action="store_true", help="retrain even when cached results exist")
    r.add_argument("--epsilons", nargs="+", help="override the epsilon sweep, e.g. none 1 5 20")
    r.add_argument("--only", nargs="+", help="run only these notebooks")
    r.add_argument("--results-dir", default=os.path.join(REPO, "results"))
    r.add_argument("--out-dir", default=os.path.join(REPO, "book", "executed"))
    b = sub.add_parser("build", help="render the Jupyter Book")
    b.add_argument("--profile", default="small")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        eps = _parse_eps(args.epsilons) if args.epsilons else None
        start = time.perf_counter()
        timings = run_notebooks(profile=args.profile, dataset=args.dataset, out_dir=args.out_dir,
                                results_dir=args.results_dir, force=args.force, epsilons=eps, only=args.only)
        print(f"executed {len(timings)} notebooks in {time.perf_counter() - start:.0f} s")
    else:
        build_book()
    return 0


if __name__ == "__main__":
    sys.exit(main())
