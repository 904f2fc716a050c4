"""``python -m dpact_tf.edge serve|issue-token|train``: the edge server, its clients' tokens, and a client that
trains against it.

    python -m dpact_tf.edge issue-token --client-id alice --tokens-file tokens.txt --out alice.token
    python -m dpact_tf.edge serve --port 50051 --profile tiny --checkpoint-dir ckpt --tokens-file tokens.txt
    python -m dpact_tf.edge train --server 127.0.0.1:50051 --profile tiny --epsilon 5 --image-budget 1e6 \
        --token-file alice.token [--ledger ~/.dpact/ledger] [--head build/head.tflite]

``serve`` and ``issue-token`` live in :mod:`dpact_tf.edge.serve_cli`.

``train`` needs ``--epsilon``: a per-coordinate epsilon (the release is uploaded as integer grid levels), or
``none``, which uploads the clean activation and says so loudly on every run.  It keeps a privacy ledger
(:mod:`dpact_tf.ledger`) and its run state (:mod:`dpact_tf.edge.resume`) in ``--ledger`` (default
``~/.dpact/ledger``): before anything is sent it prints the per-image epsilon the run would spend and refuses a
run above the per-image budget (default: epsilon 8 at delta 1e-5, which the paper's method exceeds by orders of
magnitude -- pass ``--image-budget`` to accept more); every release is recorded, and one that would take an
image beyond the budget is refused before it is sent.  Run again after an interruption, with the same
settings, it resumes the run under the same client id: applied steps are skipped and the request in flight is
resent byte for byte, so no image is released afresh because of a restart.

``--profile`` is only a shorthand for the model's dimensions and training settings (:data:`dpact_tf.edge.serve_cli.PROFILE_HELP`): the
input size, the layer widths, fc units, batch size, learning rate, momentum and decay that the book's profile of
that name uses, so that a phone and a server started with the same name build the same network.

Thin: parse arguments, build the model from those dimensions, call :mod:`dpact_tf.edge`, print a summary.  The
names are the reproduction's; the library does not import them, so :func:`main` takes the lookup as an argument
and ``__main__`` passes :func:`dpact_tf.repro.profiles.get_profile`.
Both sides build the network from the same ``--seed``, so with noise off the run is the in-process
``SplitTrainer`` run (a fresh server only needs the architecture; the seed makes runs comparable).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, List, Optional

from dpact_tf import privacy
from dpact_tf.edge.serve_cli import PROFILE_HELP, add_issue_token_arguments, add_serve_arguments
from dpact_tf.encoding import WIRE_ENCODINGS
from dpact_tf.ledger import DEFAULT_BUDGET

__all__ = ["main"]

DEFAULT_LEDGER = os.path.join("~", ".dpact", "ledger")
_UNSET = object()  # --epsilon not given


def _epsilon(text: str) -> Optional[float]:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a per-coordinate epsilon, or 'none' "
                                         "for no noise") from None
    if math.isinf(value):
        raise argparse.ArgumentTypeError("spell the no-noise baseline out: --epsilon none")
    try:
        return privacy.check_release_epsilon(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} (or 'none' for no noise)") from None


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (inf: no limit)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the per-image budget must be > 0 (got {text})")
    return value


def read_file(path: Optional[str], what: str) -> Optional[bytes]:
    """The bytes of ``path`` (None if no path is given); exits naming ``what`` when it is missing."""
    if not path:
        return None
    if not os.path.exists(path):
        raise SystemExit(f"error: {what} {path} not found")
    with open(path, "rb") as fh:
        return fh.read()


def _token(path: Optional[str]) -> Optional[str]:
    data = read_file(path, "token file")
    if data is None:
        return None
    token = data.decode().strip()
    if not token:
        raise SystemExit(f"error: token file {path} is empty")
    return token


def build_split(prof: Any, num_classes: int, cut: str, seed: int, epsilon: Optional[float], delta: float):
    """The split network of a profile, initialised from ``seed`` (what both commands build)."""
    import tensorflow as tf

    from dpact_tf.vggface import build_split_vggface

    tf.keras.utils.set_random_seed(seed)
    return build_split_vggface(num_classes=num_classes, cut=cut, epsilon=epsilon, delta=delta,
                               **prof.model_kwargs())


def training_config(prof: Any):
    """The profile's optimizer settings as a :class:`~dpact_tf.split.TrainingConfig`."""
    from dpact_tf.split import TrainingConfig

    return TrainingConfig(learning_rate=prof.learning_rate, momentum=prof.momentum, lr_decay_rate=prof.lr_decay_rate)


def _data(args: argparse.Namespace, prof: Any):
    if args.dataset == "lfw":
        from dpact_tf.data import load_lfw

        return load_lfw(image_size=prof.image_size, crop_fraction=prof.crop_fraction, seed=args.seed)
    from dpact_tf.synthetic import synthetic_faces

    return synthetic_faces(prof.synthetic_identities, prof.synthetic_images_per_identity, prof.image_size,
                           seed=args.seed)


def train(args: argparse.Namespace, prof: Any) -> int:
    import grpc

    from dpact_tf.edge.client import EdgeClient, EdgeError, TLSFailure
    from dpact_tf.edge.resume import RunState
    from dpact_tf.edge.trainer import KerasHead, LiteRTHead, RemoteTrainer, batches
    from dpact_tf.ledger import Budget, BudgetExceeded, PrivacyLedger, run_epsilon

    if args.epsilon is None:
        print("WARNING: --epsilon none: this run uploads the CLEAN first-layer activation of every image, with no "
              "noise and no privacy guarantee; the server can reconstruct the faces from it.", file=sys.stderr,
              flush=True)
    data = _data(args, prof)
    epochs = args.epochs or prof.epochs
    steps_per_epoch = math.ceil(len(data.train_labels) / prof.batch_size)
    decay_steps = args.decay_steps or epochs * steps_per_epoch
    if args.head:
        from dpact_tf.deploy.runtime import HeadRunner

        runner = HeadRunner(args.head, trusted_sha256=args.trusted_head_sha256,
                            trusted_weights_sha256=args.trusted_weights_sha256)
        if not args.trusted_head_sha256:
            print(f"warning: {args.head} was not checked against a SHA-256 you trust (--trusted-head-sha256): a head "
                  "written by the server decides what its release sends", flush=True)
        if runner.image_shape != (prof.image_size, prof.image_size, 3):
            raise SystemExit(f"error: {args.head} takes {list(runner.image_shape)} images; profile {prof.name} "
                             f"has {prof.image_size}x{prof.image_size}")
        import numpy as np

        activation_shape = tuple(runner.clean(np.zeros((1,) + runner.image_shape, np.uint8)).shape[1:])
        cut = runner.meta.get("cut", args.cut)
        delta = float(runner.meta.get("delta", args.delta))
        try:
            head: Any = LiteRTHead(runner, epsilon=args.epsilon, learning_rate=prof.learning_rate,
                                   decay_rate=prof.lr_decay_rate, decay_steps=decay_steps)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    else:
        split = build_split(prof, data.num_classes, args.cut, args.seed, args.epsilon, args.delta)
        activation_shape, cut, delta = split.activation_shape, args.cut, args.delta
        head = KerasHead(split.client, training_config(prof), decay_steps)

    try:
        budget = Budget(epsilon=DEFAULT_BUDGET.epsilon if args.image_budget is None else args.image_budget,
                        delta=args.image_delta)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    planned = run_epsilon(args.epsilon, delta, activation_shape, train_conv1=head.trains_conv1,
                          n_train=len(data.train_labels), n_test=len(data.test_labels), epochs=epochs,
                          batch_size=prof.batch_size, budget_delta=budget.delta)
    coordinate = "none (no noise)" if args.epsilon is None else f"{args.epsilon:g}"
    conv1 = "conv1 trained" if head.trains_conv1 else "conv1 frozen"
    print(f"privacy: per-coordinate epsilon {coordinate}, delta {delta:g}; this run spends a per-image epsilon of "
          f"up to {planned:.4g} at delta {budget.delta:g} (activation {list(activation_shape)}, {conv1}); "
          f"budget {budget.epsilon:g}", flush=True)
    if planned > budget.epsilon:
        if args.image_budget is None:
            raise SystemExit(f"error: the run would spend a per-image epsilon of {planned:.4g}, above the default "
                             f"budget of {DEFAULT_BUDGET.epsilon:g}; pass --image-budget {planned:.4g} (or more, "
                             "'inf' for no limit) to accept that, knowing what it protects")
        raise SystemExit(f"error: the run would spend a per-image epsilon of {planned:.4g}, above --image-budget "
                         f"{budget.epsilon:g}")
    ledger_dir = os.path.expanduser(args.ledger)
    ledger = PrivacyLedger(os.path.join(ledger_dir, "releases.jsonl"), budget=budget)
    settings = {"server": args.server, "profile": prof.name, "dataset": args.dataset, "epochs": epochs,
                "seed": args.seed, "epsilon": args.epsilon, "delta": delta, "encoding": args.encoding,
                "cut": cut, "head": os.path.abspath(args.head) if args.head else None}
    token = _token(args.token_file)
    principal = token.split(".", 1)[0] if token and "." in token else None  # the id the token was issued to
    if principal is not None:
        settings["client"] = principal
    try:
        state = RunState(os.path.join(ledger_dir, "run"), settings=settings, new_run=args.new_run,
                         client_prefix=principal)
    except ValueError as err:
        raise SystemExit(f"error: {err} (--new-run)") from None
    try:
        client = EdgeClient(args.server, client_id=state.client_id, epsilon=args.epsilon, delta=delta, cut=cut,
                            activation_shape=activation_shape, encoding=args.encoding,
                            token=token, root_certificates=read_file(args.tls_ca, "CA certificate"),
                            server_name=args.server_name, timeout=args.timeout,
                            reconnect_timeout=args.reconnect_timeout, epoch_images=len(data.train_labels),
                            allow_plaintext_token=args.insecure)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None

    class Report:
        def on_resume(self, logs: dict) -> None:
            weights = "its head restored" if logs["head_restored"] else \
                "the LiteRT head continuing from its exported weights (they cannot be restored)"
            print(f"resuming run {state.client_id} after step {logs['step']}, {weights}", flush=True)

        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            test = f", test acc {logs['test_accuracy']:.3f}" if "test_accuracy" in logs else ""
            print(f"epoch {epoch}/{epochs}: loss {logs['loss']:.4f}, train acc {logs['train_accuracy']:.3f}{test}, "
                  f"{logs['bytes_up'] / len(data.train_labels):.0f} B/image up ({logs['seconds']:.1f} s)", flush=True)

    trainer = RemoteTrainer(head, client, callbacks=[Report()], ledger=ledger, state=state)
    try:
        trainer.connect()
        if client.session.num_classes != data.num_classes:
            raise SystemExit(f"error: the server has {client.session.num_classes} classes, the data "
                             f"{data.num_classes}; start the server with --num-classes {data.num_classes}")
        history = trainer.fit(
            lambda epoch: batches(data.train_images, data.train_labels, prof.batch_size, shuffle=True,
                                  seed=args.seed, epoch=epoch), epochs,
            validation_data=lambda: batches(data.test_images, data.test_labels, prof.batch_size))
    except (BudgetExceeded, EdgeError, TLSFailure) as err:
        raise SystemExit(f"error: {err}") from None
    except grpc.RpcError as err:  # a refusal the client cannot recover from (its log line is on the server)
        raise SystemExit(f"error: the server answered {err.code().name}: {err.details()}") from None
    finally:
        client.close()
    print(f"done: run {state.client_id}; the ledger {ledger.path} holds {ledger.records} released batches, the "
          f"largest per-image epsilon is {ledger.max_image_epsilon():.4g} at delta {budget.delta:g}", flush=True)
    ledger.close()
    if args.json:
        from dpact_tf.jsonio import write_json

        write_json(args.json, {"profile": prof.name, "encoding": client.encoding, "epsilon": args.epsilon,
                               "head": "litert" if args.head else "keras", "client_id": state.client_id,
                               "history": history})
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dpact_tf.edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_serve_arguments(sub.add_parser("serve", help="run the edge server (the server half, its optimizer and "
                                                     "checkpoints)"))
    add_issue_token_arguments(sub.add_parser("issue-token", help="issue a client its token (the server keeps its "
                                                                 "digest in --tokens-file)"))
    t = sub.add_parser("train", help="train the client half against a running edge server")
    t.add_argument("--server", required=True, help="host:port of the edge server")
    t.add_argument("--profile", default="tiny", help=PROFILE_HELP)
    t.add_argument("--head", help="run the head from this .tflite in LiteRT (the phone's path) instead of Keras")
    t.add_argument("--trusted-head-sha256", help="with --head: refuse the .tflite unless the whole file has this "
                   "SHA-256 (a head you exported or approved; without it a warning says the head was not checked)")
    t.add_argument("--trusted-weights-sha256", help="with --head: also refuse it unless the conv weights stored in "
                   "it have this hash (dpact_tf.deploy.convert.weights_hash of the client you trust)")
    t.add_argument("--epsilon", type=_epsilon, default=_UNSET,
                   help="required: the per-coordinate epsilon of the release, or 'none' to upload the clean "
                        "activation (no noise, no privacy; a warning is printed on every run)")
    t.add_argument("--delta", type=float, default=1e-5, help="per-coordinate delta of the release")
    t.add_argument("--encoding", choices=WIRE_ENCODINGS, default=None,
                   help="upload encoding: 'grid' (integer levels; the only one, and the default, with noise) or, "
                        "with --epsilon none, float32 (default), float16 or uint8")
    t.add_argument("--ledger", default=DEFAULT_LEDGER,
                   help="directory of the privacy ledger (every release, per image) and of the run state that "
                        "lets an interrupted run resume (default: %(default)s)")
    t.add_argument("--image-budget", type=_budget,
                   help=f"per-image epsilon budget (default {DEFAULT_BUDGET.epsilon:g}, which the paper's method "
                        "exceeds: a larger value must be given explicitly; 'inf': no limit)")
    t.add_argument("--image-delta", type=float, default=DEFAULT_BUDGET.delta,
                   help="delta at which per-image epsilons are measured (default: %(default)s)")
    t.add_argument("--new-run", action="store_true",
                   help="abandon an unfinished run in --ledger and start a new one (its releases stay recorded)")
    t.add_argument("--epochs", type=int, help="epochs (default: the profile's)")
    t.add_argument("--dataset", choices=("synthetic", "lfw"), default="synthetic",
                   help="training data (lfw reads $DPACT_LFW_DIR)")
    t.add_argument("--cut", default="conv1_1", help="last client layer of the Keras head")
    t.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    t.add_argument("--decay-steps", type=int, help="learning-rate decay horizon (default: epochs x batches)")
    t.add_argument("--token-file", help="file holding this client's token (from issue-token); runs are named "
                   "<client id>/<run>")
    t.add_argument("--tls-ca", help="PEM certificate to trust (enables TLS)")
    t.add_argument("--server-name", help="name in the server's certificate, if not the host of --server")
    t.add_argument("--insecure", action="store_true",
                   help="send the token without TLS to a host other than this machine (a network trusted as a whole)")
    t.add_argument("--timeout", type=float, default=60.0, help="deadline of one call, seconds")
    t.add_argument("--reconnect-timeout", type=float, default=120.0,
                   help="how long to keep re-opening the session after the server went away, seconds")
    t.add_argument("--json", help="write the history here")
    t.set_defaults(func=train)
    return p


def main(argv: Optional[List[str]] = None, *, get_profile: Callable[[str], Any]) -> int:
    """Run a command; ``get_profile(name)`` turns ``--profile`` into a profile (the reproduction's
    :func:`dpact_tf.repro.profiles.get_profile` when started as ``python -m dpact_tf.edge``)."""
    p = parser()
    args = p.parse_args(argv)
    if args.command == "train" and args.epsilon is _UNSET:
        p.error("train needs --epsilon: a per-coordinate epsilon (e.g. --epsilon 5), or --epsilon none to upload "
                "the clean activation without noise")
    if not hasattr(args, "profile"):
        return args.func(args)
    try:
        prof = get_profile(args.profile)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return args.func(args, prof)
