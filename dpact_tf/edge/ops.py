"""Operating the edge server the way the gRPC ecosystem does: bounded resources, health checking, reflection,
Prometheus metrics and a log line for every refusal and error.

:func:`make_server` puts an :class:`~dpact_tf.edge.server.EdgeService` behind

* the :class:`~dpact_tf.edge.auth.Gate` (tokens checked on the metadata before a body is read, calls in flight
  bounded per client);
* gRPC's own bounds: the message size limit (by default one float32 batch of ``max_batch`` activations, from
  the declared shape; the gate logs an authenticated call it cancels, with the client id), at most
  ``max_concurrent_calls`` calls at once (more are refused RESOURCE_EXHAUSTED by gRPC without a worker thread),
  a watch on each call's upload (a request not received ``upload_grace_seconds`` after its call began is a slow
  upload: at most ``max_slow_uploads`` of them per client id, or per peer address without tokens, the others
  cancelled; none waits past ``max_upload_seconds``, by default the size limit at 10 Mbit/s and at least 60 s),
  and a connection lifetime: after ``max_call_seconds`` a connection is asked to close (clients reconnect at
  once) and the calls still on it get ``max_call_seconds`` more, so no call, however slowly it uploads, holds a
  worker thread longer than twice that;
* the standard health service ``grpc.health.v1.Health`` (SERVING for "" and for the training service;
  ``grpc_health_probe`` and load balancers use it) and server reflection (``grpcurl`` lists the services).

:class:`Metrics` exports counters and histograms in Prometheus' format (``serve --metrics-port``); it and
:class:`EventLog` are ``on_event`` callbacks, combined with :func:`fanout`.  The library prints nothing:
:class:`EventLog` writes to a :mod:`logging` logger that the ``serve`` command sends to its output.
"""
from __future__ import annotations

import json
import logging
from concurrent import futures
from typing import Callable, Optional, Sequence, Tuple

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.auth import Gate, TokenBook

__all__ = ["make_server", "default_max_message_bytes", "default_max_upload_seconds", "MIN_UPLOAD_BYTES_PER_SECOND", "Metrics", "EventLog", "fanout", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeTraining"].full_name  # "dpact.edge.v1.EdgeTraining"
Callback = Callable[[str, dict], None]


def fanout(*callbacks: Optional[Callback]) -> Callback:
    """One ``on_event`` callback that calls each of ``callbacks`` (None entries are skipped)."""
    chosen = [cb for cb in callbacks if cb is not None]

    def call(name: str, info: dict) -> None:
        for cb in chosen:
            cb(name, info)

    return call


class EventLog:
    """Events as log lines ``[edge] <name>: <json>``: every refusal (WARNING), every handler error with its
    traceback (ERROR), every ``step_every``-th step and every other event (INFO); in-flight counts are not
    logged."""

    def __init__(self, logger: logging.Logger, *, step_every: int = 50) -> None:
        self.logger, self.step_every = logger, max(1, int(step_every))

    def __call__(self, name: str, info: dict) -> None:
        if name == "inflight" or (name == "step" and info.get("step", 0) % self.step_every):
            return
        if name == "error":
            fields = {k: v for k, v in info.items() if k != "traceback"}
            self.logger.error("[edge] error: %s\n%s", json.dumps(fields), info.get("traceback", ""))
            return
        level = logging.WARNING if name in ("refused", "journal_damaged") else logging.INFO
        self.logger.log(level, "[edge] %s: %s", name, json.dumps(info, default=str))


class Metrics:
    """Prometheus metrics of one server, in their own registry (so that several servers in one process, as in
    the tests, do not collide).  Call :meth:`watch` with the service for its gauges and pass the object as an
    ``on_event`` callback."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.steps = Counter("dpact_edge_steps", "training steps applied", registry=r)
        self.refusals = Counter("dpact_edge_refusals", "calls refused, by gRPC status and reason",
                                ["code", "reason"], registry=r)
        self.errors = Counter("dpact_edge_handler_errors", "exceptions escaping a handler (answered INTERNAL)",
                              registry=r)
        self.step_seconds = Histogram("dpact_edge_step_seconds", "time of one applied step (checks, update, journal)",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                      registry=r)
        self.checkpoint_seconds = Histogram("dpact_edge_checkpoint_seconds", "time of one checkpoint",
                                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.inflight = Gauge("dpact_edge_inflight_calls", "authenticated calls in flight", registry=r)
        self.clients = Gauge("dpact_edge_clients", "client ids the server keeps progress for", registry=r)
        self.sessions = Gauge("dpact_edge_sessions", "open sessions", registry=r)
        self.server_steps = Gauge("dpact_edge_server_steps", "optimizer updates of the shared model", registry=r)
        self.queue = Gauge("dpact_edge_queue_depth", "calls whose request arrived, waiting for the step lock "
                           "(steps are serialised)", registry=r)

    def watch(self, service) -> "Metrics":
        """Read the gauges of ``service`` (an :class:`~dpact_tf.edge.server.EdgeService`) at each scrape."""
        self.clients.set_function(service.client_count)
        self.sessions.set_function(service.session_count)
        self.server_steps.set_function(lambda: service.half.steps)
        self.queue.set_function(service.queue_depth)
        return self

    def __call__(self, name: str, info: dict) -> None:
        if name == "step":
            self.steps.inc()
            self.step_seconds.observe(info.get("seconds", 0.0))
        elif name == "refused":
            self.refusals.labels(code=info.get("code", ""), reason=info.get("reason", "")).inc()
        elif name == "error":
            self.errors.inc()
        elif name == "inflight":
            self.inflight.set(info["calls"])
        elif name == "checkpoint":
            self.checkpoint_seconds.observe(info.get("seconds", 0.0))

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serve ``/metrics`` over HTTP on ``host:port`` (a thread); returns (HTTP server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)


def default_max_message_bytes(activation_shape: Sequence[int], max_batch: int) -> int:
    """A float32 batch of ``max_batch`` activations plus 64 KiB for labels and framing (at most 2 GiB - 1,
    gRPC's largest limit)."""
    return min(int(np.prod(activation_shape, dtype=np.int64)) * 4 * int(max_batch) + (1 << 16), 2**31 - 1)


# The slowest upload a server waits for by default: 10 Mbit/s, an LTE uplink.
MIN_UPLOAD_BYTES_PER_SECOND = 1.25e6


def default_max_upload_seconds(max_message_bytes: int) -> float:
    """How long a call may take to deliver its request by default: a request of the size limit at
    :data:`MIN_UPLOAD_BYTES_PER_SECOND`, and at least 60 s."""
    return max(60.0, max_message_bytes / MIN_UPLOAD_BYTES_PER_SECOND)


def make_server(service, *, host: str = "127.0.0.1", port: int = 0, tokens: Optional[TokenBook] = None,
                tls: Optional[Tuple[bytes, bytes]] = None, max_message_bytes: Optional[int] = None,
                max_workers: int = 16, max_calls_per_client: int = 2, max_concurrent_calls: Optional[int] = None,
                max_call_seconds: float = 600.0, upload_grace_seconds: float = 2.0, max_slow_uploads: int = 2,
                max_upload_seconds: Optional[float] = None, health_servicer: Optional[health.HealthServicer] = None,
                interceptors: Sequence[grpc.ServerInterceptor] = ()) -> Tuple[grpc.Server, int]:
    """A (not yet started) gRPC server for ``service``; returns (server, bound port).

    ``tls`` is (certificate chain PEM, private key PEM); without it the port is plaintext (loopback or a
    trusted network only).  ``tokens``: the clients' tokens (None: no authentication -- tests and loopback).
    ``max_concurrent_calls`` defaults to four calls per worker thread.  ``health_servicer``: pass one to
    report NOT_SERVING at shutdown (``enter_graceful_shutdown``); by default one is made.  ``interceptors``
    run after the gate, on authenticated calls.
    """
    if max_workers < 1 or max_call_seconds <= 0:
        raise ValueError(f"max_workers must be >= 1 and max_call_seconds > 0 (got {max_workers}, {max_call_seconds})")
    limit = max_message_bytes or default_max_message_bytes(service.activation_shape, service.max_batch)
    if max_upload_seconds is None:
        max_upload_seconds = default_max_upload_seconds(limit)
    age_ms = int(max_call_seconds * 1000)
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
               ("grpc.so_reuseport", 0), ("grpc.max_connection_age_ms", age_ms),
               ("grpc.max_connection_age_grace_ms", age_ms)]
    gate = Gate(tokens, on_event=lambda name, info: service.on_event(name, info),
                max_calls_per_client=max_calls_per_client, max_message_bytes=limit,
                upload_grace_seconds=upload_grace_seconds, max_slow_uploads=max_slow_uploads,
                max_upload_seconds=max_upload_seconds)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options,
                         interceptors=[gate, *interceptors],
                         maximum_concurrent_rpcs=max_concurrent_calls or 4 * max_workers)
    pb_grpc.add_EdgeTrainingServicer_to_server(service, server)
    health_servicer = health_servicer or health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if tls is not None:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind {address}")
    return server, bound
