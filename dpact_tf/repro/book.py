"""Reproduce and render the book: ``python -m dpact_tf.repro run|build`` (what ``make book`` calls).

``run`` converts each text notebook ``notebooks/NN_name.md`` (jupytext MyST markdown, the source a person edits)
to ``.ipynb``, executes it with papermill at one profile into ``book/executed/`` and cleans what a reader should
not see: the output streams written to stderr (progress bars, training logs, library warnings) are echoed to
this terminal while the notebook runs and dropped from the chapter; the ``parameters`` and papermill's
``injected-parameters`` cells are hidden from the HTML (they stay in the notebook); a short "how to re-run this
chapter" note is appended.  The notebooks cache their training runs under ``results/<profile>/`` so a second
``run`` only re-renders.  ``build`` renders the Jupyter Book (notebook execution off, warnings as errors).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import REPO

__all__ = ["NOTEBOOKS", "NEEDS", "run_notebooks", "build_book", "resolve_dataset", "clean_executed", "rerun_note", "main"]

# Execution order matters: the fine-tuning notebook uses the pre-trained model, the discussion every study, and the
# book's front page (00_intro: what the book finds, from every chapter's metrics) comes last.
NOTEBOOKS: List[str] = ["01_activations", "02_scratch", "03_finetune", "04_partition", "05_mobile_cost",
                         "06_accounting", "07_attacks", "08_fidelity", "09_baselines",
                         "10_discussion", "00_intro"]

# The chapters whose results a chapter reads: the cached runs it shares (the public model, trained first by
# 01_activations; the from-scratch runs of 02_scratch) and the metrics it loads.  With ``jobs > 1`` a chapter starts
# only after these have finished, so no two processes ever train the same cached run or read a half-written one.
NEEDS: Dict[str, Tuple[str, ...]] = {
    "01_activations": (),
    "02_scratch": (),
    "03_finetune": ("01_activations",),
    "04_partition": ("02_scratch",),       # at the paper profile its conv1_1 runs are 02's
    "05_mobile_cost": (),
    "06_accounting": (),
    # the public model, the fine-tuning runs (server classifier); the oracle's comparison reads 02's metrics
    "07_attacks": ("01_activations", "02_scratch", "03_finetune"),
    # without dlib's model the attacks' identity oracle is 08's no-noise convergence run: 07 trains it first
    "08_fidelity": ("02_scratch", "03_finetune", "07_attacks"),
    # at tiny its references are 04's; its reconstructions' oracle is 07's (so trained before), and the oracle's
    # comparison reads 02's and 03's metrics (and 08's when recorded: a parallel build may run 09 beside 08)
    "09_baselines": ("01_activations", "02_scratch", "03_finetune", "04_partition", "07_attacks"),
    "10_discussion": tuple(NOTEBOOKS[:-2]),
    "00_intro": tuple(NOTEBOOKS[:-2]),
}

HIDDEN_TAGS = ("parameters", "injected-parameters")
# Parameters every chapter of one book takes alike (run_notebooks refuses them in a per-chapter override).
SHARED_PARAMETERS = ("profile", "dataset", "results_dir", "force", "vggface_weights", "seed")
# Parameters that name paths of the machine that executed the book: left out of the chapters' re-run notes.
LOCAL_PARAMETERS = ("results_dir", "vggface_weights")
# A logging line that reached stdout (Python/absl logging: "WARNING:tensorflow:...", "W1123 11:02:03.4 ...").
_LOG_LINE = re.compile(r"^(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):\S*:|[IWEF]\d{4} \d\d:\d\d:\d\d)")


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


def rerun_note(name: str, parameters: Dict[str, Any]) -> str:
    """The markdown note appended to a chapter: how to re-run it, with the parameters it was run with -- except
    those naming places on the machine that ran it (:data:`LOCAL_PARAMETERS`: a reader's are elsewhere, and the
    defaults find them)."""
    # -p for strings; -y with JSON (which is YAML: None -> null) for everything else
    params = " ".join(f"-p {k} {v!r}" if isinstance(v, str) else f"-y '{k}: {json.dumps(v)}'"
                      for k, v in parameters.items() if k not in LOCAL_PARAMETERS)
    only = f"python -m dpact_tf.repro run --only {name} --profile {parameters.get('profile', 'small')}"
    return ("```{admonition} Re-run this chapter\n:class: tip\n"
            f"This chapter is the notebook `notebooks/{name}.md`, executed with papermill. To re-run it:\n\n"
            f"    {only}\n\n"
            "or, with papermill directly (change the parameters at will):\n\n"
            f"    jupytext --to ipynb notebooks/{name}.md -o - | papermill - book/executed/{name}.ipynb {params}\n\n"
            "Cached runs are reused; add `--force` (or `-p force True`) to retrain.\n```")


def local_paths(parameters: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(place on this machine, what a reader is shown instead), longest first: the LFW directory and the results
    directory by the variables that set them (no ``$``: a chapter's Markdown would read a pair as math), the
    repository as ``.``, the home directory as ``~`` -- a chapter and its notebook name none of them."""
    from dpact_tf.repro.results import resolve_results_dir

    places = {}
    lfw = os.environ.get("DPACT_LFW_DIR") or os.path.join(REPO, "data", "lfw")
    places[os.path.realpath(lfw)] = places[os.path.abspath(lfw)] = "DPACT_LFW_DIR"
    results = resolve_results_dir(parameters.get("results_dir"))
    places[os.path.realpath(results)] = places[os.path.abspath(results)] = "DPACT_RESULTS_DIR"
    places[REPO] = "."
    places[os.path.expanduser("~")] = "~"
    return sorted(((k, v) for k, v in places.items() if k not in ("", "/")), key=lambda kv: -len(kv[0]))


def _without_local_paths(text: str, places: List[Tuple[str, str]]) -> str:
    for place, shown in places:
        text = text.replace(place, shown)
    return text


def clean_executed(path: str, *, name: str, parameters: Dict[str, Any]) -> Dict[str, int]:
    """Drop stderr streams and logging lines, hide parameter cells, name no place on this machine
    (:func:`local_paths`: in outputs, cell sources and papermill's metadata), append the re-run note; returns the
    count of outputs dropped (they were echoed to the terminal while the notebook ran)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    places = local_paths(parameters)
    dropped = 0
    for cell in nb.cells:
        cell["source"] = _without_local_paths(cell.get("source", ""), places)
        tags = cell.get("metadata", {}).get("tags", [])
        if any(t in tags for t in HIDDEN_TAGS) and "remove-cell" not in tags:
            cell.setdefault("metadata", {})["tags"] = [*tags, "remove-cell"]
        if cell.get("cell_type") == "code":
            kept = []
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream":
                    if out.get("name") == "stderr":
                        dropped += 1
                        continue
                    lines = "".join(out.get("text", "")).splitlines(keepends=True)
                    text = "".join(line for line in lines if not _LOG_LINE.match(line))
                    dropped += text != "".join(lines)
                    if not text.strip():
                        continue
                    out["text"] = text
                if "text" in out:
                    out["text"] = _without_local_paths("".join(out["text"]), places)
                for mime, data in out.get("data", {}).items():
                    if mime.startswith("text/") or mime.endswith("json"):
                        out["data"][mime] = (_without_local_paths("".join(data), places) if not isinstance(data, dict)
                                             else json.loads(_without_local_paths(json.dumps(data), places)))
                kept.append(out)
            cell["outputs"] = kept
    papermill = nb.get("metadata", {}).get("papermill")
    if papermill:
        nb["metadata"]["papermill"] = json.loads(_without_local_paths(json.dumps(papermill), places))
    note = nbformat.v4.new_markdown_cell(rerun_note(name, parameters))
    note["id"] = f"{name}-rerun"
    nb.cells.append(note)
    nbformat.write(nb, path)
    return {"stderr_outputs_dropped": dropped}


def _to_ipynb(source: str, dest: str) -> None:
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    jupytext.write(nb, dest, fmt="ipynb")


def run_notebooks(*, profile: str, dataset: str, out_dir: str, results_dir: Optional[str] = None,
                  force: bool = False, epsilons: Optional[Sequence[Optional[float]]] = None,
                  only: Optional[Sequence[str]] = None, notebook_dir: Optional[str] = None,
                  vggface_weights: Optional[str] = None, jobs: int = 1,
                  overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, float]:
    """Execute the notebooks with papermill; returns seconds per notebook.

    Only the parameters a notebook declares are passed to it (papermill warns about the others).
    ``overrides``: per notebook, parameters that replace the shared ones (e.g. ``{"04_partition": {"epsilons":
    None}}``: that chapter sweeps its profile's own epsilons while the others take ``epsilons``).
    ``vggface_weights``: the public Keras VGG-Face weights file; the fine-tuning chapter then starts from VGG-Face
    instead of the offline stand-in (needs the ``paper`` profile's shapes).
    ``jobs``: notebooks executed at once, each in its own process, a chapter starting once the chapters it
    :data:`NEEDS` have finished.  Worth it where a chapter's time is mostly single-threaded (the ``tiny`` smoke
    runs of the tests); at ``small`` and above TensorFlow already uses every core, and the chapters' own timings
    (the mobile-cost benchmark) want the machine to themselves: keep 1 there.
    """
    prof = get_profile(profile)
    dataset = resolve_dataset(dataset)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 (got {jobs})")
    notebook_dir = notebook_dir or os.path.join(REPO, "notebooks")
    os.makedirs(out_dir, exist_ok=True)
    params: Dict[str, Any] = {"profile": prof.name, "dataset": dataset}
    if force:
        params["force"] = True
    if results_dir is not None:
        params["results_dir"] = os.path.abspath(results_dir)
    if epsilons is not None:
        params["epsilons"] = list(epsilons)
    if vggface_weights is not None:
        path = os.path.abspath(vggface_weights)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{vggface_weights} not found; on a connected machine run "
                                    "`python data_scripts/fetch_vggface_weights.py` to download it")
        inside = os.path.relpath(path, REPO)  # the notebooks run in the repository: keep the chapter's note local-free
        params["vggface_weights"] = path if inside.startswith(os.pardir) else inside
    unknown = sorted((set(only or ()) | set(overrides or ())) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebooks {unknown}; choose from {NOTEBOOKS}")
    for name, extra in (overrides or {}).items():
        shared = sorted(set(extra) & set(SHARED_PARAMETERS))
        if shared:
            raise ValueError(f"overrides[{name!r}] sets {shared}: every chapter shares these (chapters read each "
                             "other's cached runs); pass them to run_notebooks itself")
    per_notebook = {n: {**params, **dict((overrides or {}).get(n, {}))} for n in NOTEBOOKS}
    names = [n for n in NOTEBOOKS if not only or n in only]
    label = f"profile={prof.name}, dataset={dataset}"
    if jobs == 1 or len(names) == 1:
        timings: Dict[str, float] = {}
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] executing notebooks/{name}.md ({label})", file=sys.stderr, flush=True)
            timings[name] = _execute(name, notebook_dir, out_dir, per_notebook[name],
                                     overridden=tuple((overrides or {}).get(name, ())))
            print(f"[{i}/{len(names)}] {name}: {timings[name]:.0f} s", file=sys.stderr, flush=True)
        return timings
    return _execute_parallel(names, notebook_dir, out_dir, per_notebook, jobs=jobs, label=label,
                             overridden={n: tuple(v) for n, v in (overrides or {}).items()})


def _execute(name: str, notebook_dir: str, out_dir: str, params: Dict[str, Any],
             overridden: Sequence[str] = ()) -> float:
    """Execute one notebook into ``out_dir`` and clean it; returns its wall time in seconds.  ``overridden``: the
    parameters given for this notebook alone, which it must declare (a misspelt one is an error, not ignored)."""
    import papermill as pm

    start = time.perf_counter()
    source_nb = os.path.join(out_dir, f"{name}.source.ipynb")
    _to_ipynb(os.path.join(notebook_dir, f"{name}.md"), source_nb)
    declared = pm.inspect_notebook(source_nb)
    undeclared = sorted(set(overridden) - set(declared))
    if undeclared:
        os.remove(source_nb)
        raise ValueError(f"notebooks/{name}.md declares no parameter {undeclared} (it declares {sorted(declared)})")
    nb_params = {k: v for k, v in params.items() if k in declared}
    out = os.path.join(out_dir, f"{name}.ipynb")
    try:
        pm.execute_notebook(source_nb, out, parameters=nb_params, kernel_name="python3", progress_bar=False,
                            log_output=False, stdout_file=sys.stderr, stderr_file=sys.stderr, cwd=REPO)
    finally:
        os.remove(source_nb)
    clean_executed(out, name=name, parameters=nb_params)
    return time.perf_counter() - start


def _execute_parallel(names: List[str], notebook_dir: str, out_dir: str, params: Dict[str, Dict[str, Any]], *,
                      jobs: int, label: str, overridden: Optional[Dict[str, Tuple[str, ...]]] = None) -> Dict[str, float]:
    """:func:`_execute` of ``names`` in ``jobs`` processes, each notebook once the ones it needs (of ``names``)
    are done; the first failure stops the scheduling and is raised once the running notebooks have ended."""
    import concurrent.futures as cf
    import multiprocessing

    pending = list(names)
    done: Dict[str, float] = {}
    running: Dict[cf.Future, str] = {}
    failure: Optional[BaseException] = None
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            if failure is None:
                for name in [n for n in pending if all(d in done or d not in names for d in NEEDS.get(n, ()))]:
                    if len(running) >= jobs:
                        break
                    pending.remove(name)
                    print(f"[{len(names) - len(pending)}/{len(names)}] executing notebooks/{name}.md ({label}; "
                          f"{jobs} at once)", file=sys.stderr, flush=True)
                    running[pool.submit(_execute, name, notebook_dir, out_dir, params[name],
                                        (overridden or {}).get(name, ()))] = name
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    done[name] = future.result()
                except BaseException as exc:  # re-raised below, after the notebooks still running have ended
                    failure = failure or exc
                    print(f"notebooks/{name}.md failed", file=sys.stderr, flush=True)
                else:
                    print(f"[done {len(done)}/{len(names)}] {name}: {done[name]:.0f} s", file=sys.stderr, flush=True)
    if failure is not None:
        raise failure
    return {n: done[n] for n in names}


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
    parser = argparse.ArgumentParser(prog="python -m dpact_tf.repro", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the notebooks with papermill")
    r.add_argument("--profile", default="small")
    r.add_argument("--dataset", default="auto", help="auto (LFW when found), lfw or synthetic")
    r.add_argument("--force", action="store_true", help="retrain even when cached results exist")
    r.add_argument("--epsilons", nargs="+", help="override the epsilon sweep, e.g. none 1 5 20")
    r.add_argument("--only", nargs="+", help="run only these notebooks")
    r.add_argument("--results-dir", default=None, help="default: $DPACT_RESULTS_DIR, else results/ in the repository")
    r.add_argument("--vggface-weights", default=None,
                   help="public Keras VGG-Face weights (data_scripts/fetch_vggface_weights.py): the fine-tuning "
                        "chapter starts from them (use with --profile paper)")
    r.add_argument("--out-dir", default=os.path.join(REPO, "book", "executed"))
    r.add_argument("--jobs", type=int, default=1,
                   help="notebooks executed at once (each after the chapters it needs); for the tiny profile: at "
                        "small and above TensorFlow already uses every core and the cost chapter times the machine")
    sub.add_parser("build", help="render the Jupyter Book")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        eps = _parse_eps(args.epsilons) if args.epsilons else None
        start = time.perf_counter()
        timings = run_notebooks(profile=args.profile, dataset=args.dataset, out_dir=args.out_dir,
                                results_dir=args.results_dir, force=args.force, epsilons=eps, only=args.only,
                                vggface_weights=args.vggface_weights, jobs=args.jobs)
        print(f"executed {len(timings)} notebooks in {time.perf_counter() - start:.0f} s")
    else:
        build_book()
    return 0
