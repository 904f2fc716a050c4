"""``python -m dpact_tf.edge serve`` and ``issue-token``: the edge server and its clients' credentials.

    python -m dpact_tf.edge issue-token --client-id alice --tokens-file tokens.txt --out alice.token
    python -m dpact_tf.edge serve --host 0.0.0.0 --port 50051 --profile small --checkpoint-dir ckpt \
        --tokens-file tokens.txt --tls-cert server.pem --tls-key server.key --metrics-port 9090

Thin: parse arguments, build the server model from a profile, put :class:`~dpact_tf.edge.server.EdgeService`
behind :func:`~dpact_tf.edge.ops.make_server`, log its events (:class:`~dpact_tf.edge.ops.EventLog`) to the
standard output and stop cleanly on SIGINT/SIGTERM (health NOT_SERVING, calls drained, a last checkpoint).
A server reachable beyond this machine must have TLS and tokens (``--insecure`` overrides, for a network
that is trusted as a whole).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

__all__ = ["serve", "issue_token_command", "add_serve_arguments", "add_issue_token_arguments"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


#: what ``--profile`` means to the edge commands (shared by serve and train)
PROFILE_HELP = ("shorthand for the model's dimensions and training settings, as the book's profile of that name "
                "defines them (dpact_tf/repro/profiles.py): tiny = 32x32 inputs at 1/8 widths; small and "
                "medium = 64x64 at 1/8 widths; paper = 224x224 at VGG-Face's widths. Both sides must give the same name.")


def _logger() -> logging.Logger:
    log = logging.getLogger("dpact_tf.edge")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def serve(args: argparse.Namespace, prof: Any) -> int:
    import tensorflow as tf
    from grpc_health.v1 import health

    from dpact_tf.edge.auth import TokenBook
    from dpact_tf.edge.cli import build_split, read_file, training_config
    from dpact_tf.edge.model import ServerHalf
    from dpact_tf.edge.ops import EventLog, Metrics, fanout, make_server
    from dpact_tf.edge.schedule import EpochDecay, StepDecay
    from dpact_tf.edge.server import EdgeService
    from dpact_tf.edge.store import CheckpointStore, DamagedFile, DirectoryInUse

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("error: TLS needs both --tls-cert and --tls-key")
        tls = (read_file(args.tls_cert, "certificate"), read_file(args.tls_key, "private key"))
    if args.host not in LOOPBACK and not (tls and args.tokens_file) and not args.insecure:
        raise SystemExit(f"error: {args.host} is reachable beyond this machine: serve it with TLS (--tls-cert, "
                         "--tls-key) and per-client tokens (--tokens-file), or pass --insecure on a network you trust "
                         "as a whole (without TLS the tokens, uploads and gradients cross it in the clear)")
    try:
        tokens = TokenBook(args.tokens_file) if args.tokens_file else None
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    log = _logger()
    num_classes = args.num_classes or prof.synthetic_identities
    strategy = tf.distribute.MirroredStrategy() if args.strategy == "mirrored" else None
    with (strategy.scope() if strategy else tf.distribute.get_strategy().scope()):
        split = build_split(prof, num_classes, args.cut, args.seed, None, 1e-5)
    config = training_config(prof)
    half = ServerHalf(split.server, config, args.decay_steps, strategy=strategy,
                      max_grad_norm=args.max_grad_norm or None)
    if args.decay == "per-epoch":
        schedule = EpochDecay(config.learning_rate, config.lr_decay_rate, args.decay_epochs or prof.epochs)
    else:
        schedule = StepDecay(config.learning_rate, config.lr_decay_rate, args.decay_steps)
    metrics = Metrics() if args.metrics_port is not None else None
    try:
        store = CheckpointStore(args.checkpoint_dir, fsync=args.fsync) if args.checkpoint_dir else None
        service = EdgeService(half, num_classes=num_classes, cut=args.cut, activation_shape=split.activation_shape,
                              max_batch=args.max_batch, activation_range=split.dp_layer.true_range,
                              schedule=schedule, store=store,
                              checkpoint_every=args.checkpoint_every if store else 0, idle_ttl=args.idle_ttl,
                              reply_ttl=args.reply_ttl, min_epsilon=args.min_epsilon, max_delta=args.max_delta,
                              max_ids_per_token=args.max_ids_per_token,
                              on_event=fanout(EventLog(log), metrics))
    except (DamagedFile, DirectoryInUse) as err:
        raise SystemExit(f"error: {err}") from None
    health_servicer = health.HealthServicer()
    limit = int(args.max_message_mb * 2**20) if args.max_message_mb else None
    server, port = make_server(service, host=args.host, port=args.port, tokens=tokens, tls=tls,
                               max_message_bytes=limit, max_workers=args.max_workers,
                               max_calls_per_client=args.max_calls_per_client,
                               max_concurrent_calls=args.max_concurrent_calls, max_call_seconds=args.max_call_seconds,
                               upload_grace_seconds=args.upload_grace_seconds, max_slow_uploads=args.max_slow_uploads,
                               max_upload_seconds=args.max_upload_seconds,
                               health_servicer=health_servicer)
    http = metrics.watch(service).serve(args.metrics_port, args.metrics_host) if metrics is not None else None
    server.start()
    if args.host not in LOOPBACK and args.insecure:
        log.warning("[edge] warning: --insecure: %s without TLS or tokens; anyone who reaches the port can read the "
                    "uploads, or train the model", args.host)
    auth = f"{len(tokens)} client tokens" if tokens is not None else "no tokens"
    scrape = f", metrics on {args.metrics_host}:{http[0].server_port}" if http else ""
    log.info("[edge] serving %s on %s:%d (profile %s, cut %s, activation %s, %d classes, %s, %d server steps "
             "restored%s)", "TLS" if tls else "plaintext", args.host, port, prof.name, args.cut,
             list(split.activation_shape), num_classes, auth, half.steps, scrape)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=args.shutdown_grace).wait()
    if store is not None:
        service.save()
        store.close()
    if http is not None:
        http[0].shutdown()
    log.info("[edge] stopped after %d server steps", half.steps)
    return 0


def issue_token_command(args: argparse.Namespace, prof: Any = None) -> int:
    import os

    from dpact_tf.edge.auth import issue_token

    try:
        token = issue_token(args.tokens_file, args.client_id)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        print(f"token of client {args.client_id!r} written to {args.out} (give it to that client only; "
              f"{args.tokens_file} keeps its SHA-256; an earlier token of this id no longer works)")
    else:
        print(token)
    return 0


def add_serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface: needs TLS "
                   "and --tokens-file, or --insecure)")
    s.add_argument("--port", type=int, default=50051, help="port (0: any free port, printed at start)")
    s.add_argument("--profile", default="tiny", help=PROFILE_HELP)
    s.add_argument("--num-classes", type=int, help="identities of fc8 (default: the profile's synthetic set)")
    s.add_argument("--cut", default="conv1_1", help="last client layer (the paper: conv1_1)")
    s.add_argument("--seed", type=int, default=0, help="initialisation seed (use the client's for comparable runs)")
    s.add_argument("--decay", choices=("per-step", "per-epoch"), default="per-epoch",
                   help="what the learning rate's decay counts: each client's own epochs of the data it declares "
                        "(--decay-epochs; the default: no client can change another's rate), or the server's steps, "
                        "all clients together (--decay-steps; any token holder's steps decay every client's rate)")
    s.add_argument("--decay-steps", type=int, default=1000, help="per-step: server steps (all clients together) over "
                   "which the learning rate decays by the profile's lr_decay_rate (N phones x epochs x batches)")
    s.add_argument("--decay-epochs", type=float, help="per-epoch: epochs of each client's data over which its steps' "
                   "learning rate decays by lr_decay_rate (default: the profile's epochs)")
    s.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the global norm of the server's weight "
                   "gradients of one step to this, which bounds how far one upload moves the shared model (0: no "
                   "clipping)")
    s.add_argument("--min-epsilon", type=float, help="the smallest epsilon a noisy client may declare (default: the "
                   "lower end of the grid's certified interval at the client's delta)")
    s.add_argument("--max-delta", type=float, default=1e-3, help="the largest delta a noisy client may declare")
    s.add_argument("--max-ids-per-token", type=int, default=64, help="client ids with an open session per token "
                   "(<id> and <id>/<run>); a handshake beyond them is refused")
    s.add_argument("--checkpoint-dir", help="checkpoints, stored replies and step journal; restored from at start")
    s.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint every this many server steps")
    s.add_argument("--fsync", action="store_true", help="fsync every journal record and checkpoint file: "
                   "acknowledged steps also survive a power cut (slower); a kill -9 needs only the default flush")
    s.add_argument("--idle-ttl", type=float, default=3600.0,
                   help="seconds without calls after which a client's handshake is forgotten (it handshakes again)")
    s.add_argument("--reply-ttl", type=float, default=7 * 86400.0,
                   help="seconds a client's last reply is kept after its last step, to answer a retry of that step "
                   "(a client resuming later cannot go on with its run); older reply files are removed at checkpoints")
    s.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: serve TLS)")
    s.add_argument("--tls-key", help="PEM private key")
    s.add_argument("--tokens-file", help="the clients' token digests, written by issue-token (re-read when it "
                   "changes); every call must carry a token from it")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without TLS or tokens (a network trusted as a whole)")
    s.add_argument("--max-batch", type=int, default=256, help="largest batch accepted in one call")
    s.add_argument("--max-message-mb", type=float, help="message size limit (default: a float32 batch of "
                   "--max-batch activations)")
    s.add_argument("--max-workers", type=int, default=16, help="gRPC worker threads (steps are serialised)")
    s.add_argument("--max-calls-per-client", type=int, default=2,
                   help="calls of one client id in flight at once; more are refused before their body is read")
    s.add_argument("--max-concurrent-calls", type=int,
                   help="calls in flight at once, all clients (default: 4 x --max-workers); more are refused")
    s.add_argument("--max-call-seconds", type=float, default=600.0,
                   help="connection lifetime: a connection is closed after twice this, so no call lasts longer")
    s.add_argument("--upload-grace-seconds", type=float, default=2.0, help="a request not received this long "
                   "after its call began is a slow upload")
    s.add_argument("--max-slow-uploads", type=int, default=2, help="slow uploads in flight per client id (with "
                   "tokens) or per peer address (without); more are cancelled")
    s.add_argument("--max-upload-seconds", type=float, help="a request not received this long after its call began "
                   "is cancelled (default: the message size limit at 10 Mbit/s, at least 60 s)")
    s.add_argument("--shutdown-grace", type=float, default=10.0, help="seconds to let calls finish at shutdown")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (/metrics)")
    s.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics port")
    s.add_argument("--strategy", choices=("none", "mirrored"), default="none",
                   help="tf.distribute strategy of the server half (mirrored: every local GPU)")
    s.set_defaults(func=serve)


def add_issue_token_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--client-id", required=True, help="the client the token is for (letters, digits, _ and -)")
    t.add_argument("--tokens-file", required=True, help="the server's tokens file (created if missing)")
    t.add_argument("--out", help="write the token to this file (mode 0600) instead of printing it")
    t.set_defaults(func=issue_token_command)
