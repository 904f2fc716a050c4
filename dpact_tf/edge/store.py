"""The server's durable state: a checkpoint every N steps, each client's last reply, and a journal of the steps
since the checkpoint.

A step is acknowledged only after its request is appended to the journal, so after a ``kill -9`` the
server restores the last checkpoint, re-applies the journalled steps (the same requests, at the learning
rates recorded with them, through the same deterministic step on the same weights) and is exactly where it
was when it last answered a client: no acknowledged step is lost and none is applied twice.  Every record
on disk carries its length and CRC-32C (:mod:`dpact_tf.edge.journal`): a journal record cut short by a kill
(a step never acknowledged) or damaged is cut off, with everything after it, and the server starts from the
records before it.

Files in the checkpoint directory:

* ``ckpt-<steps>.*`` -- ``tf.train.Checkpoint`` of the server model and its optimizer;
* ``state.bin`` -- one record, :class:`ServerState`: the server steps, the checkpoint's name, each client's
  last step, request digest and image counts (a few hundred bytes per client);
* ``replies/<hash of the client id>.bin`` -- each client's last reply (dL/d(activation) of its last batch, to
  answer a retry after a crash): a :class:`StoredReply` record and the raw float32 gradient as a second
  record, so a reply of any size is stored (a protobuf message cannot exceed 2 GiB).  A file not rewritten
  for ``reply_ttl`` seconds (its client has not stepped since) is removed at a checkpoint, so the directory
  holds the replies of the clients active in that time, not of every client id ever seen;
* ``lock`` -- held with ``flock`` by the server using the directory (a second server on it is refused);
* ``journal.bin`` -- one :class:`JournalRecord` per step since the checkpoint: what the server received
  anyway (encoded activations and labels) and the learning rate.

A checkpoint writes the model, the replies that changed since the previous checkpoint, then the state (an
atomic rename: a kill leaves the old or the new), then empties the journal.  No TensorFlow import here: the
checkpoint object is passed in.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge.journal import DamagedFile, Journal, read_records, write_records

__all__ = ["CheckpointStore", "DamagedFile", "DirectoryInUse"]


class DirectoryInUse(RuntimeError):
    """Another process holds the checkpoint directory's lock."""


class CheckpointStore:
    """Checkpoint, state, reply and journal files of one server in ``directory``.

    ``fsync``: force every journal record and checkpoint file to the disk before going on (an acknowledged
    step then survives a power cut; without it, a killed process loses nothing, the operating system having
    the data).
    """

    def __init__(self, directory: str, *, fsync: bool = False) -> None:
        if not directory:
            raise ValueError("directory must name a folder for the server's checkpoints")
        self.directory, self.fsync = directory, bool(fsync)
        self.replies_dir = os.path.join(directory, "replies")
        os.makedirs(self.replies_dir, exist_ok=True)
        self._lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise DirectoryInUse(f"{directory} is in use by another server (it holds {directory}/lock); two servers "
                                 "on one checkpoint directory would overwrite each other's journal") from None
        self.state_path = os.path.join(directory, "state.bin")
        self.journal = Journal(os.path.join(directory, "journal.bin"), fsync=self.fsync)

    # --- reading -------------------------------------------------------------------------------------------
    def load_state(self) -> Optional[pb.ServerState]:
        """The state of the last checkpoint (None before the first); :class:`DamagedFile` if it fails its
        checksum (the directory cannot be restored: restore it from a backup, or move it away to start afresh)."""
        if not os.path.exists(self.state_path):
            if os.path.exists(os.path.join(self.directory, "state.pb")):
                raise DamagedFile(f"{self.directory} holds a state.pb, which this server does not read (its state is "
                                  "state.bin, checksummed): move the directory away to start afresh")
            return None
        records = read_records(self.state_path)
        if len(records) != 1:
            raise DamagedFile(f"{self.state_path}: expected one record, found {len(records)}")
        return pb.ServerState.FromString(records[0])

    def journal_records(self) -> Iterator[pb.JournalRecord]:
        """The good journal records, in order; stop reading to refuse one, then call :meth:`recover_journal`."""
        for body in self.journal.records():
            yield pb.JournalRecord.FromString(body)

    def recover_journal(self, refused: Optional[str] = None) -> Optional[dict]:
        """Cut the journal after the last record read (:meth:`Journal.recover`); what was dropped, or None."""
        return self.journal.recover(refused)

    def load(self) -> Tuple[Optional[pb.ServerState], List[pb.JournalRecord]]:
        """The last saved state and the good journal records (changes nothing)."""
        return self.load_state(), list(self.journal_records())

    def load_reply(self, client_id: str) -> Optional[Tuple[pb.StoredReply, pb.TrainStepReply]]:
        """(header, full reply) of ``client_id``'s stored reply, or None if there is none or it is damaged."""
        path = self._reply_path(client_id)
        if not os.path.exists(path):
            return None
        try:
            header_body, data = read_records(path)
        except (DamagedFile, ValueError):
            return None
        header = pb.StoredReply.FromString(header_body)
        if header.client_id != client_id:
            return None
        reply = pb.TrainStepReply()
        reply.CopyFrom(header.reply)
        reply.grad.data = data
        return header, reply

    def checkpoint_prefix(self, state: pb.ServerState) -> str:
        return os.path.join(self.directory, state.checkpoint)

    # --- writing -------------------------------------------------------------------------------------------
    def append(self, record: pb.JournalRecord) -> None:
        """Make one applied step durable; call before acknowledging it."""
        self.journal.append(record.SerializeToString())

    def _reply_path(self, client_id: str) -> str:
        return os.path.join(self.replies_dir, hashlib.sha256(client_id.encode()).hexdigest()[:32] + ".bin")

    def save_reply(self, client_id: str, step: int, digest: bytes, reply: pb.TrainStepReply) -> None:
        header = pb.StoredReply(client_id=client_id, step=step, request_digest=digest, reply=reply)
        header.reply.grad.data = b""
        write_records(self._reply_path(client_id), [header.SerializeToString(), reply.grad.data], fsync=self.fsync)

    def remove_old_replies(self, reply_ttl: float) -> int:
        """Remove the reply files not rewritten for ``reply_ttl`` seconds; how many were removed."""
        removed, cutoff = 0, time.time() - reply_ttl
        for entry in os.scandir(self.replies_dir):
            if entry.name.endswith(".bin") and entry.stat().st_mtime < cutoff:
                os.remove(entry.path)
                removed += 1
        return removed

    def save(self, checkpoint: Any, state: pb.ServerState,
             replies: Dict[str, Tuple[int, bytes, pb.TrainStepReply]]) -> None:
        """Write ``checkpoint`` (a ``tf.train.Checkpoint``), the ``replies`` that changed (client id -> (step,
        request digest, reply)) and ``state``, then start an empty journal."""
        name = f"ckpt-{state.server_steps}"
        checkpoint.write(os.path.join(self.directory, name))
        if self.fsync:
            for path in glob.glob(os.path.join(self.directory, name + ".*")):
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        for client_id, (step, digest, reply) in replies.items():
            self.save_reply(client_id, step, digest, reply)
        state.checkpoint = name
        write_records(self.state_path, [state.SerializeToString()], fsync=self.fsync)
        # Records up to state.server_steps are in the checkpoint now; a kill before this line leaves them in
        # the journal, where the restore skips them by their server_steps.
        self.journal.reset()
        for path in glob.glob(os.path.join(self.directory, "ckpt-*")):
            if not os.path.basename(path).startswith(name + "."):
                os.remove(path)

    def close(self) -> None:
        self.journal.close()
        if self._lock >= 0:
            os.close(self._lock)  # releases the directory's lock
            self._lock = -1
