"""``python -m dpact_tf.edge serve|train``: the edge server and a client that trains against it.

    python -m dpact_tf.edge serve --port 50051 --profile tiny --checkpoint-dir ckpt --token-file token.txt
    python -m dpact_tf.edge train --server 127.0.0.1:50051 --profile tiny --epsilon 5 --encoding uint8 \
        --token-file token.txt [--head build/head.tflite]

Thin: parse arguments, build the model from a profile, call :mod:`dpact_tf.edge`, print a summary.  The
profiles are the reproduction's; the library does not import them, so :func:`main` takes the profile lookup
as an argument and ``__main__`` passes :func:`dpact_tf.repro.profiles.get_profile`.
Both sides build the network from the same ``--seed``, so with noise off the run is the in-process
``SplitTrainer`` run (a fresh server only needs the architecture; the seed makes runs comparable).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import threading
import uuid
from typing import Any, Callable, List, Optional

from dpact_tf import privacy

__all__ = ["main"]


def _epsilon(text: str) -> Optional[float]:
    if text.lower() in ("none", "inf"):
        return None
    try:
        return privacy.check_release_epsilon(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} (or 'none' for no noise)") from None


def _read(path: Optional[str], what: str) -> Optional[bytes]:
    if not path:
        return None
    if not os.path.exists(path):
        raise SystemExit(f"error: {what} {path} not found")
    with open(path, "rb") as fh:
        return fh.read()


def _token(path: Optional[str]) -> Optional[str]:
    data = _read(path, "token file")
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


def serve(args: argparse.Namespace, prof: Any) -> int:
    import tensorflow as tf

    from dpact_tf.edge.model import ServerHalf
    from dpact_tf.edge.server import EdgeService, make_server
    from dpact_tf.edge.store import CheckpointStore

    num_classes = args.num_classes or prof.synthetic_identities
    strategy = tf.distribute.MirroredStrategy() if args.strategy == "mirrored" else None
    with (strategy.scope() if strategy else tf.distribute.get_strategy().scope()):
        split = build_split(prof, num_classes, args.cut, args.seed, None, 1e-5)
    half = ServerHalf(split.server, training_config(prof), args.decay_steps, strategy=strategy)

    def on_event(name: str, info: dict) -> None:
        if name != "step" or info["step"] % 50 == 0:
            print(f"[edge] {name}: {json.dumps(info)}", flush=True)

    store = CheckpointStore(args.checkpoint_dir) if args.checkpoint_dir else None
    service = EdgeService(half, num_classes=num_classes, cut=args.cut, activation_shape=split.activation_shape,
                          max_batch=args.max_batch, store=store,
                          checkpoint_every=args.checkpoint_every if store else 0, on_event=on_event)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("error: TLS needs both --tls-cert and --tls-key")
        tls = (_read(args.tls_cert, "certificate"), _read(args.tls_key, "private key"))
    limit = int(args.max_message_mb * 2**20) if args.max_message_mb else None
    server, port = make_server(service, host=args.host, port=args.port, token=_token(args.token_file), tls=tls,
                               max_message_bytes=limit, max_workers=args.max_workers)
    server.start()
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (tls and args.token_file):
        print("[edge] warning: listening beyond this machine without TLS and a token; anyone who reaches the "
              "port can read the uploads and train the model (pass --tls-cert/--tls-key and --token-file)",
              flush=True)
    print(f"[edge] serving {'TLS' if tls else 'plaintext'} on {args.host}:{port} (profile {prof.name}, "
          f"cut {args.cut}, activation {list(split.activation_shape)}, {num_classes} classes, "
          f"{half.steps} server steps restored)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2.0).wait()
    if store is not None:
        service.save()
        store.close()
    print(f"[edge] stopped after {half.steps} server steps", flush=True)
    return 0


def _data(args: argparse.Namespace, prof: Any):
    if args.dataset == "lfw":
        from dpact_tf.data import load_lfw

        return load_lfw(image_size=prof.image_size, crop_fraction=prof.crop_fraction, seed=args.seed)
    from dpact_tf.synthetic import synthetic_faces

    return synthetic_faces(prof.synthetic_identities, prof.synthetic_images_per_identity, prof.image_size,
                           seed=args.seed)


def train(args: argparse.Namespace, prof: Any) -> int:
    from dpact_tf.edge.client import EdgeClient
    from dpact_tf.edge.trainer import KerasHead, LiteRTHead, RemoteTrainer, batches

    data = _data(args, prof)
    epochs = args.epochs or prof.epochs
    steps_per_epoch = math.ceil(len(data.train_labels) / prof.batch_size)
    decay_steps = args.decay_steps or epochs * steps_per_epoch
    if args.head:
        from dpact_tf.runtime import HeadRunner

        runner = HeadRunner(args.head)
        if runner.image_shape != (prof.image_size, prof.image_size, 3):
            raise SystemExit(f"error: {args.head} takes {list(runner.image_shape)} images; profile {prof.name} "
                             f"has {prof.image_size}x{prof.image_size}")
        import numpy as np

        activation_shape = tuple(runner.clean(np.zeros((1,) + runner.image_shape, np.uint8)).shape[1:])
        cut = runner.meta.get("cut", args.cut)
        delta = float(runner.meta.get("delta", args.delta))
        head: Any = LiteRTHead(runner, epsilon=args.epsilon, learning_rate=prof.learning_rate,
                               decay_rate=prof.lr_decay_rate, decay_steps=decay_steps)
    else:
        split = build_split(prof, data.num_classes, args.cut, args.seed, args.epsilon, args.delta)
        activation_shape, cut, delta = split.activation_shape, args.cut, args.delta
        head = KerasHead(split.client, training_config(prof), decay_steps)
    client = EdgeClient(args.server, client_id=args.client_id or uuid.uuid4().hex, epsilon=args.epsilon,
                        delta=delta, cut=cut, activation_shape=activation_shape, encoding=args.encoding,
                        token=_token(args.token_file), root_certificates=_read(args.tls_ca, "CA certificate"),
                        server_name=args.server_name, timeout=args.timeout, reconnect_timeout=args.reconnect_timeout)

    class Report:
        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            test = f", test acc {logs['test_accuracy']:.3f}" if "test_accuracy" in logs else ""
            print(f"epoch {epoch}/{epochs}: loss {logs['loss']:.4f}, train acc {logs['train_accuracy']:.3f}{test}, "
                  f"{logs['bytes_up'] / len(data.train_labels):.0f} B/image up ({logs['seconds']:.1f} s)", flush=True)

    trainer = RemoteTrainer(head, client, callbacks=[Report()])
    trainer.connect()
    if client.session.num_classes != data.num_classes:
        raise SystemExit(f"error: the server has {client.session.num_classes} classes, the data "
                         f"{data.num_classes}; start the server with --num-classes {data.num_classes}")
    history = trainer.fit(
        lambda epoch: batches(data.train_images, data.train_labels, prof.batch_size, shuffle=True, seed=args.seed,
                              epoch=epoch), epochs,
        validation_data=lambda: batches(data.test_images, data.test_labels, prof.batch_size))
    client.close()
    if args.json:
        from dpact_tf.jsonio import write_json

        write_json(args.json, {"profile": prof.name, "encoding": args.encoding, "epsilon": args.epsilon,
                               "head": "litert" if args.head else "keras", "history": history})
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dpact_tf.edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the edge server (the server half, its optimizer and checkpoints)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=50051, help="port (0: any free port, printed at start)")
    s.add_argument("--profile", default="tiny", help="model size profile: tiny, small or paper")
    s.add_argument("--num-classes", type=int, help="identities of fc8 (default: the profile's synthetic set)")
    s.add_argument("--cut", default="conv1_1", help="last client layer (the paper: conv1_1)")
    s.add_argument("--seed", type=int, default=0, help="initialisation seed (use the client's for comparable runs)")
    s.add_argument("--decay-steps", type=int, default=1000, help="steps over which the learning rate decays by "
                   "the profile's lr_decay_rate (epochs x batches per epoch of the clients)")
    s.add_argument("--checkpoint-dir", help="checkpoints and step journal; restored from at start")
    s.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint every this many server steps")
    s.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: serve TLS)")
    s.add_argument("--tls-key", help="PEM private key")
    s.add_argument("--token-file", help="file holding the shared secret every call must carry")
    s.add_argument("--max-batch", type=int, default=256, help="largest batch accepted in one call")
    s.add_argument("--max-message-mb", type=float, help="message size limit (default: a float32 batch of "
                   "--max-batch activations)")
    s.add_argument("--max-workers", type=int, default=16, help="gRPC worker threads (steps are serialised)")
    s.add_argument("--strategy", choices=("none", "mirrored"), default="none",
                   help="tf.distribute strategy of the server half (mirrored: every local GPU)")
    s.set_defaults(func=serve)
    t = sub.add_parser("train", help="train the client half against a running edge server")
    t.add_argument("--server", required=True, help="host:port of the edge server")
    t.add_argument("--profile", default="tiny", help="model size profile: tiny, small or paper")
    t.add_argument("--head", help="run the head from this .tflite in LiteRT (the phone's path) instead of Keras")
    t.add_argument("--epsilon", type=_epsilon, default=None, help="per-coordinate epsilon ('none': no noise)")
    t.add_argument("--delta", type=float, default=1e-5, help="delta of the release")
    t.add_argument("--encoding", choices=("float32", "float16", "uint8"), default="float32", help="upload encoding")
    t.add_argument("--epochs", type=int, help="epochs (default: the profile's)")
    t.add_argument("--dataset", choices=("synthetic", "lfw"), default="synthetic",
                   help="training data (lfw reads $DPACT_LFW_DIR)")
    t.add_argument("--cut", default="conv1_1", help="last client layer of the Keras head")
    t.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    t.add_argument("--decay-steps", type=int, help="learning-rate decay horizon (default: epochs x batches)")
    t.add_argument("--client-id", help="stable id of this client (default: random)")
    t.add_argument("--token-file", help="file holding the shared secret")
    t.add_argument("--tls-ca", help="PEM certificate to trust (enables TLS)")
    t.add_argument("--server-name", help="name in the server's certificate, if not the host of --server")
    t.add_argument("--timeout", type=float, default=60.0, help="deadline of one call, seconds")
    t.add_argument("--reconnect-timeout", type=float, default=120.0,
                   help="how long to keep re-opening the session after the server went away, seconds")
    t.add_argument("--json", help="write the history here")
    t.set_defaults(func=train)
    return p


def main(argv: Optional[List[str]] = None, *, get_profile: Callable[[str], Any]) -> int:
    """Run a command; ``get_profile(name)`` turns ``--profile`` into a profile (the reproduction's
    :func:`dpact_tf.repro.profiles.get_profile` when started as ``python -m dpact_tf.edge``)."""
    args = parser().parse_args(argv)
    try:
        prof = get_profile(args.profile)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return args.func(args, prof)
