"""Write the notebook sources in notebooks/ (run once after editing this file; outputs stay empty).

    python tools/make_notebooks.py

The notebooks are the sources of record; this script only keeps their shared structure in one place:
imports, one cell tagged ``parameters``, then narrative and calls into dpact_tf.
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, os.pardir, "notebooks")

IMPORTS = """import pandas as pd
from IPython.display import Markdown, display

from dpact_tf import experiments"""

PARAMS = '''profile = "small"      # "tiny" | "small" | "paper"
dataset = "lfw"        # "lfw" | "synthetic" (results and figures are then labelled synthetic)
epsilons = None        # None: the paper's sweep [None (no noise), 1, 2, 3, 5, 10, 14, 20]
epochs = None          # None: the profile's
seed = 0
results_dir = "results"
force = False          # True: retrain even when a cached run exists'''

COMMON = "profile=profile, dataset=dataset, results_dir=results_dir, seed=seed, force=force"


def fig_cell(source, name, caption):
    cell = new_code_cell(source)
    cell.metadata["mystnb"] = {"figure": {"name": name, "caption": caption}}
    cell.metadata["tags"] = ["remove-input"]
    return cell


def table_cell(source):
    return new_code_cell(source, metadata={"tags": ["remove-input"]})


def notebook(cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def params_cell(extra="", params=PARAMS):
    return new_code_cell(params + extra, metadata={"tags": ["parameters"]})


NOTEBOOKS = {}

NOTEBOOKS["01_activations"] = [
    new_markdown_cell("""# What the server sees: activation images (Fig. 2)

The client releases $f + \\mathcal{N}(0, S_f^2\\sigma^2)$ for every coordinate of the normalized `conv1_1`
activation. This chapter shows those releases for real test faces, for the no-noise baseline and each
$\\epsilon$ of the sweep, displayed as the paper does (activation $\\times 255$, negatives removed), and
measures how much of each activation map survives the noise (SSIM and PSNR against the clean map).

The first layer used here is the one pre-trained on the public identities (the fine-tuning setting of
Fig. 4, where `conv1_1` is public); the faces are test images of evaluation identities."""),
    new_code_cell(IMPORTS),
    params_cell(),
    new_code_cell(f"study = experiments.activation_study(epsilons=epsilons, {COMMON})"),
    fig_cell('display(study["figures"][0])', "fig-activations",
             "conv1_1 activations after the DP layer, for three test faces (rows: the three most active channels "
             "of each face) and each epsilon. Activation x 255, negatives removed."),
    new_markdown_cell("""The noise std is $S_f\\sigma = \\frac{1}{\\sqrt 2}\\cdot\\frac{\\sqrt{2\\ln(1.25/\\delta)}}{\\epsilon}$
with $\\delta = 10^{-5}$: about 3.4 at $\\epsilon = 1$ and 0.17 at $\\epsilon = 20$, while a clean normalized
activation never exceeds $1/\\sqrt 3 \\approx 0.58$. The table lists the formula's std beside the std
measured on the released maps, and the similarity of each released map to the clean one."""),
    table_cell('pd.DataFrame(study["table"]).round(4)'),
    fig_cell('display(study["figures"][1])', "fig-activation-similarity",
             "Mean SSIM and PSNR between released and clean activation maps (as displayed, 0-255) per epsilon."),
]

NOTEBOOKS["02_scratch"] = [
    new_markdown_cell("""# Training from scratch on DP activations (Fig. 3)

The whole network is trained from random weights with the split after `conv1_1`: the client updates
`conv1_1` from the server's gradients, the server trains everything above it on noisy activations.
One run per $\\epsilon$ plus the no-noise baseline, on the 158-identity LFW protocol (split 9:1 per person;
the exact counts are printed below), with the paper's optimizer (SGD, momentum 0.9, batch 64, learning rate 0.01 decayed by
0.1 over the run). The test accuracy is measured with the noise on: a deployed client perturbs every
activation it sends, at test time too."""),
    new_code_cell(IMPORTS),
    params_cell(),
    new_code_cell(f"study = experiments.scratch_study(epsilons=epsilons, epochs=epochs, {COMMON})\n"
                  "display(Markdown(f\"Data: {study['data']['description']}. Majority-class test accuracy: \"\n"
                  "                 f\"{study['chance']:.3f}.\"))"),
    fig_cell('display(study["figures"][0])', "fig-scratch-curves",
             "Training from scratch: loss, training accuracy and test accuracy per epoch for each epsilon; "
             "dotted: always predicting the largest class."),
    table_cell('pd.DataFrame(study["table"]).drop(columns=["run"]).round(4)'),
    fig_cell('display(study["figures"][1])', "fig-scratch-final", "Final test accuracy against epsilon."),
    new_markdown_cell("""How to read this: the baseline shows what the (profile-sized) network learns from
LFW in this budget; the gap between each noisy run and the baseline is the price of the noise. The
discussion chapter compares these numbers with the paper's claims."""),
]

NOTEBOOKS["03_finetune"] = [
    new_markdown_cell("""# Fine-tuning the output layer on DP activations (Fig. 4)

The paper's second experiment starts from the public pre-trained VGG-Face and trains only the output
layer on the noisy activations of the client's data. Offline we cannot download VGG-Face, so the
"public model" is pre-trained here, without noise, on LFW identities **disjoint** from the 158
evaluation identities (people with 5–9 images; see the data chapter of the README). On a connected
machine `dpact_tf.weights.load_vggface_weights` loads the real weights instead.

During fine-tuning the client's `conv1_1` is frozen (it is the public one), the server trains `fc8` only."""),
    new_code_cell(IMPORTS),
    params_cell(),
    new_code_cell(f"study = experiments.finetune_study(epsilons=epsilons, epochs=epochs, {COMMON})\n"
                  "p = study['pretrain']\n"
                  "display(Markdown(f\"Pre-trained on {p['people']} public identities ({p['images']} images) for \"\n"
                  "                 f\"{p['epochs']} epochs: training accuracy {p['final_train_accuracy']:.3f}, \"\n"
                  "                 f\"held-out accuracy {p['final_heldout_accuracy']:.3f}.\"))"),
    fig_cell('display(study["figures"][0])', "fig-finetune-curves",
             "Fine-tuning only the output layer: loss, training and test accuracy per epoch for each epsilon."),
    table_cell('pd.DataFrame(study["table"]).drop(columns=["run"]).round(4)'),
    new_markdown_cell("""## The paper's two claims about this figure

The paper reports that with $\\epsilon = 3$ the fine-tuned model reaches the baseline's accuracy within
5 epochs, and that with $\\epsilon \\le 1$ training fails to converge. `experiments.finetune_claims`
makes both checkable; the rule and tolerance of each check are part of its result:"""),
    table_cell('pd.json_normalize(study["claims"], sep=" / ").T.rename(columns={0: "value"})'),
]

NOTEBOOKS["04_partition"] = [
    new_markdown_cell("""# Where to split: the partition position

The paper splits after `conv1_1`. Cutting later moves more computation to the phone and changes what is
released: after a pooling layer the activation is smaller (fewer coordinates to upload and to perturb),
after more convolutions it is more abstract. This chapter trains the same network from scratch with the
cut after `conv1_1`, `conv1_2`, `pool1`, `conv2_2` and `pool2`, each with the DP layer at the cut, and
reports accuracy against $\\epsilon$ and the client's cost per cut."""),
    new_code_cell(IMPORTS),
    params_cell('\ncuts = None            # None: the profile\'s cuts',
                params=PARAMS.replace("None: the paper's sweep [None (no noise), 1, 2, 3, 5, 10, 14, 20]",
                                      "None: the profile's partition epsilons")),
    new_code_cell(f"study = experiments.partition_study(epsilons=epsilons, cuts=cuts, epochs=epochs, {COMMON})"),
    fig_cell('display(study["figures"][0])', "fig-partition",
             "Left: final test accuracy per cut layer and noise level. Right: the client's compute and upload per image."),
    new_markdown_cell("Accuracy per cut and $\\epsilon$:"),
    table_cell('pd.DataFrame(study["rows"]).pivot(index="cut", columns="epsilon", values="test_accuracy")'
               '.reindex([c["cut"] for c in study["costs"]]).round(4)'),
    new_markdown_cell("The client's cost per image at this profile's size and at the paper's (224×224, full VGG-Face):"),
    table_cell('pd.concat([pd.DataFrame(study["costs"]).assign(size="this profile"),\n'
               '           pd.DataFrame(study["paper_costs"]).assign(size="paper (224x224)")]).round(2)'),
]

NOTEBOOKS["05_mobile_cost"] = [
    new_markdown_cell("""# The client's cost on a device

The paper runs the client on a Nexus 6P: for a batch of 8 images, loading the model takes under 0.4 s,
the forward pass under 0.6 s, the backward pass under 0.2 s per sample, and the app stays under 500 MB.
We cannot run a phone here. What we can do is run the exported `head.tflite` in the **LiteRT runtime
without TensorFlow** — the runtime a phone uses — on this machine's CPU, and compare it with the Keras
client on the same CPU. The numbers below are *different hardware* from the paper's and are labelled so.
See the "Deploy the head to a phone" chapter for the export itself."""),
    new_code_cell(IMPORTS),
    params_cell(),
    new_code_cell("study = experiments.mobile_study(profile=profile, results_dir=results_dir, force=force,\n"
                  "                                 include_paper_size=profile != \"tiny\")\n"
                  "res = study['results']\n"
                  "display(Markdown(f\"Measured on {res['hardware']['cpu']} ({res['hardware']['cores']} cores), \"\n"
                  "                 f\"batch of {res['batch']}, median of {res['repeats']} runs.\"))"),
    fig_cell('display(study["figures"][0])', "fig-mobile-cost",
             "Model load, forward and backward time: the paper's phone (upper bounds) beside LiteRT and Keras on this CPU (log scale)."),
    table_cell('rows = []\nfor c in res["configs"]:\n'
               '    for rt in ("litert", "keras"):\n'
               '        m = c[rt]\n'
               '        rows.append({"head": c["label"], "input": f"{c[\'image_size\']}x{c[\'image_size\']}", "runtime": rt,\n'
               '                     "load (s)": m["load_s"], "forward, batch 8 (s)": m["forward_s"],\n'
               '                     "backward / sample (s)": m.get("backward_s_per_sample"),\n'
               '                     "peak memory (MB)": m.get("peak_rss_mb", m.get("peak_rss_mb_process"))})\n'
               'rows.append({"head": "paper", "input": "224x224", "runtime": "Nexus 6P (bounds)", **{\n'
               '    "load (s)": res["paper_nexus6p"]["load_s"], "forward, batch 8 (s)": res["paper_nexus6p"]["forward_s"],\n'
               '    "backward / sample (s)": res["paper_nexus6p"]["backward_s_per_sample"],\n'
               '    "peak memory (MB)": res["paper_nexus6p"]["memory_mb"]}})\n'
               'pd.DataFrame(rows).round(4)'),
    new_markdown_cell("""The Keras process's peak memory includes TensorFlow itself; the LiteRT numbers come from a
separate process that imports only the runtime. Upload per image and model size:"""),
    table_cell('pd.DataFrame([{"head": c["label"], "activation": "x".join(map(str, c["activation_shape"])),\n'
               '               **{f"upload {k} (KiB)": v / 1024 for k, v in c["upload_bytes_per_image"].items()},\n'
               '               **{f".tflite {k} (KiB)": v / 1024 for k, v in c["tflite_bytes"].items()},\n'
               '               "LiteRT/Keras forward": c["ratio_litert_over_keras"]["forward_s"],\n'
               '               "LiteRT/Keras backward": c["ratio_litert_over_keras"].get("backward_s_per_sample")}\n'
               '              for c in res["configs"]]).round(2)'),
    new_markdown_cell("""Sending the noisy activation as float16 or uint8 instead of float32 is post-processing of a
differentially private release, so it keeps the $(\\epsilon, \\delta)$ guarantee while cutting the upload
by 2× or 4×. Note the size of the upload itself: at the paper's resolution one image becomes 224×224×64
activations, 12.8 MB as float32 — about 85 times the 150 KB of a 224×224 RGB image."""),
]

NOTEBOOKS["06_accounting"] = [
    new_markdown_cell("""# What guarantee does a user actually get?

The paper proves $(\\epsilon, \\delta)$-DP **per activation coordinate**, and bounds the composition over
the $p \\times q = 3 \\times 3$ positions a kernel sees. But the server receives every coordinate of an
image's activation volume at once, and — during training — the same image again every epoch, with fresh
noise. This chapter computes what the same noise guarantees per image and per training run:

* **per image:** two images can differ in every coordinate, by at most $S_f$ each, so the volume's L2
  sensitivity is $S_f\\sqrt{d}$ with $d = H W C$; with per-coordinate std $S_f\\sigma$ the release is a single
  Gaussian mechanism with noise multiplier $z = \\sigma/\\sqrt{d}$;
* **per training run:** $E$ releases compose; for Gaussians exactly, to multiplier $z/\\sqrt{E}$.

Each is computed exactly (analytic Gaussian mechanism) and with dp-accounting's PLD and RDP
accountants, which bound it from above."""),
    new_code_cell("import pandas as pd\nfrom IPython.display import Markdown, display\n\nfrom dpact_tf import privacy_truth"),
    params_cell(),
    new_code_cell("study = privacy_truth.accounting_study(profile=profile, dataset=dataset, results_dir=results_dir,\n"
                  "                                       epsilons=epsilons)"),
    fig_cell('display(study["figures"][0])', "fig-accounting",
             "The paper's per-coordinate epsilon against the epsilon of the same noise per image and per training run."),
    new_markdown_cell("The numbers (ε at δ = 10⁻⁵; `exact` = analytic Gaussian, `pld`/`rdp` = dp-accounting bounds):"),
    table_cell('cols = ["epsilon_per_coordinate", "noise_std", "paper_composition_epsilon", "image_noise_multiplier",\n'
               '        "image_epsilon_exact", "image_epsilon_pld", "image_epsilon_rdp", "epochs", "run_epsilon_exact",\n'
               '        "run_epsilon_pld", "run_epsilon_rdp"]\n'
               'pd.concat({k: pd.DataFrame(v)[cols] for k, v in study["tables"].items()}).applymap(lambda v: f"{v:.4g}")'),
    new_code_cell('display(Markdown(privacy_truth.accounting_summary(study["tables"])))',
                  metadata={"tags": ["remove-input"]}),
]

NOTEBOOKS["07_attacks"] = [
    new_markdown_cell("""# What does a curious server recover?

The paper names two threats: the server copying or reconstructing the client's images from what it
receives, and inferring the training images from the learned model. We measure both against $\\epsilon$:

1. **Reconstruction**, when the server knows `conv1_1` (fine-tuning: the first layer is public) —
   (a) optimization-based inversion with a smoothness prior, (b) a decoder the server trains on public
   faces (disjoint identities), simulating the client's noise — and when it does not (training from
   scratch, `conv1_1` private), with a surrogate first layer.
2. **Identity leakage**: the server embeds each noisy activation with the public pre-trained model and
   matches a client's new, unlabelled activation to the labelled activations it received in training.
3. **Membership inference** on the model trained from scratch (TF Privacy's threshold and
   logistic-regression attacks), with its AUC, attacker advantage and empirical $\\epsilon$ lower bound."""),
    new_code_cell("import pandas as pd\nfrom IPython.display import Markdown, display\n\nfrom dpact_tf import privacy_truth"),
    params_cell(),
    new_code_cell("study = privacy_truth.attack_study(profile=profile, dataset=dataset, results_dir=results_dir,\n"
                  "                                   epsilons=epsilons, seed=seed, force=force)"),
    fig_cell('display(study["figures"][0])', "fig-reconstructions",
             "True test faces and what the server reconstructs from their noisy activations, per epsilon."),
    fig_cell('display(study["figures"][1])', "fig-attacks",
             "Reconstruction quality, identity leakage and membership inference against epsilon."),
    table_cell('pd.DataFrame(study["rows"]).set_index("epsilon").T.applymap(lambda v: f"{v:.3f}" if isinstance(v, float) else v)'),
    new_code_cell('display(Markdown(privacy_truth.attack_summary(study["rows"], study["chance"])))',
                  metadata={"tags": ["remove-input"]}),
    new_markdown_cell("""**Formal guarantee vs empirical leakage.** The accounting chapter shows that the per-image
guarantee is formally vacuous at every $\\epsilon$ of the sweep. The measurements above are what these
particular attackers achieve on these faces; they are lower bounds on leakage, not guarantees. Both are
reported side by side in the discussion chapter."""),
]

NOTEBOOKS["08_discussion"] = [
    new_markdown_cell("""# Discussion: which of the paper's claims reproduce

Each row is a claim of the paper, the number our runs give (read from the metrics the other notebooks
recorded — nothing here is typed in by hand), and whether it reproduces at this profile. A claim that
does not reproduce is a finding, not a bug to tune away. The evidence is in {numref}`fig-activations`,
{numref}`fig-scratch-curves`, {numref}`fig-finetune-curves`, {numref}`fig-partition`,
{numref}`fig-mobile-cost`, {numref}`fig-accounting` and {numref}`fig-attacks`."""),
    new_code_cell("import pandas as pd\nfrom IPython.display import Markdown, display\n\nfrom dpact_tf import claims"),
    params_cell(),
    table_cell("table = claims.claims_table(results_dir=results_dir, profile=profile, dataset=dataset)\n"
               "pd.set_option('display.max_colwidth', None)\n"
               "pd.DataFrame(table)"),
    new_code_cell("display(Markdown(claims.summary_text(table, profile=profile, dataset=dataset)))",
                  metadata={"tags": ["remove-input"]}),
]


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        for i, cell in enumerate(cells):
            cell["id"] = f"{name}-{i:02d}"  # stable ids: regenerating gives no spurious diff
        nbformat.write(notebook(cells), os.path.join(OUT, f"{name}.ipynb"))
        print(f"wrote notebooks/{name}.ipynb")


if __name__ == "__main__":
    main()
