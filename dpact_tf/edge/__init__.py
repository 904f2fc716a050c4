"""A real edge server: the split protocol of Mao et al. (2018) between processes, over gRPC.

* ``dpact_edge.proto`` -- the protocol's messages (handshake, train step, evaluation); generated modules
  ``dpact_edge_pb2.py`` / ``dpact_edge_pb2_grpc.py`` (regeneration command in the .proto).
* :mod:`~dpact_tf.edge.wire`    -- arrays <-> protos with :mod:`dpact_tf.encoding`, the server's input checks
  (a noisy release travels as grid levels, checked against the mechanism the client declared).
* :mod:`~dpact_tf.edge.model`   -- :class:`ServerHalf`: the server model behind the front, optionally under
  ``tf.distribute``.
* :mod:`~dpact_tf.edge.store`   -- checkpoints every N steps plus a step journal (survives ``kill -9``).
* :mod:`~dpact_tf.edge.server`  -- :class:`EdgeService` (each client's session, its step ids, the checks).
* :mod:`~dpact_tf.edge.auth`    -- per-client tokens (:class:`TokenBook`, :func:`issue_token`) and the gate that
  checks them before a request body is read.
* :mod:`~dpact_tf.edge.ops`     -- :func:`make_server` (bounded resources, health, reflection) and
  :class:`Metrics` (Prometheus), :class:`EventLog`.
* :mod:`~dpact_tf.edge.client`  -- :class:`EdgeClient` (TensorFlow-free; retries and resumes).
* :mod:`~dpact_tf.edge.resume`  -- :class:`RunState`: the client's id, progress and write-ahead outbox, so that
  a restarted client resends instead of releasing again.
* :mod:`~dpact_tf.edge.trainer` -- :class:`RemoteTrainer` with a Keras or LiteRT head, a privacy ledger
  (:mod:`dpact_tf.ledger`) and a run state.
* ``python -m dpact_tf.edge serve|train|issue-token`` -- the commands.

Imports are lazy so that the phone's side (client, trainer with a LiteRT head) runs without TensorFlow.
"""
from __future__ import annotations

from dpact_tf._lazy import lazy_getattr

_LAZY = {
    "EdgeClient": "dpact_tf.edge.client",
    "EdgeError": "dpact_tf.edge.client",
    "EdgeService": "dpact_tf.edge.server",
    "make_server": "dpact_tf.edge.ops",
    "TokenBook": "dpact_tf.edge.auth",
    "issue_token": "dpact_tf.edge.auth",
    "Metrics": "dpact_tf.edge.ops",
    "ServerHalf": "dpact_tf.edge.model",
    "CheckpointStore": "dpact_tf.edge.store",
    "RemoteTrainer": "dpact_tf.edge.trainer",
    "RunState": "dpact_tf.edge.resume",
    "KerasHead": "dpact_tf.edge.trainer",
    "LiteRTHead": "dpact_tf.edge.trainer",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("dpact_tf.edge", _LAZY)
