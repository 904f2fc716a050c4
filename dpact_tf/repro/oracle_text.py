"""The identity oracle beside the book's non-private models, as the attack chapters print it (from recorded
metrics; nothing is trained here)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from dpact_tf.repro.results import load_metrics, no_noise_final

__all__ = ["non_private_references", "oracle_note"]


def non_private_references(results_dir: Optional[str], profile: str, dataset: str) -> Dict[str, float]:
    """Final test accuracy of every non-private model the book has recorded at ``profile``: the from-scratch and
    fine-tuning chapters' no-noise runs, the fidelity chapter's no-noise run trained to convergence, and the
    frontier chapter's no-noise references (mean over seeds).  Chapters not yet run are left out."""
    from dpact_tf.repro.frontier import SCRATCH_REFERENCE

    out: Dict[str, float] = {}
    for study, label in (("scratch", "the paper's network from scratch, no noise"),
                         ("finetune", "the public model fine-tuned, no noise")):
        acc = no_noise_final(results_dir, profile, dataset, study)
        if acc is not None:
            out[label] = acc
    conv = load_metrics(results_dir, profile, dataset, "convergence")
    if conv and conv.get("baseline_final") is not None:
        out["the paper's network trained to convergence, no noise"] = float(conv["baseline_final"])
    frontier = load_metrics(results_dir, profile, dataset, "frontier") or {}
    for name, values in frontier.get("references", {}).items():
        if values and name != SCRATCH_REFERENCE:  # the from-scratch run, already above
            out[f"{name}, no noise (frontier chapter)"] = float(sum(values) / len(values))
    return out


def oracle_note(oracle: Optional[Dict[str, Any]], references: Dict[str, float]) -> str:
    """Markdown: the oracle's test accuracy against the best of ``references`` (name -> test accuracy)."""
    if not oracle:
        return "No identity oracle is recorded at this profile yet (the attacks chapter records it)."
    acc = oracle["test_accuracy"]
    head = f"The identity oracle ({oracle['description']}) names {100 * acc:.1f} % of the test images"
    if not references:
        return head + "; no non-private model of the book is recorded yet to set it against."
    name, best = max(references.items(), key=lambda kv: kv[1])
    verdict = "at least as accurate as" if acc >= best else "**less accurate than**"
    return (f"{head}: {verdict} the best non-private model the book has recorded here ({name}, "
            f"{100 * best:.1f} %; {len(references)} compared).")
