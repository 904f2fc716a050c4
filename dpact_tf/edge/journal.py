"""Checksummed records on disk: the edge server's append-only journal and its atomically written files.

A record is ``[u64 length][u32 CRC-32C of the body][body]``, little endian: the layout of the write-ahead
logs of LevelDB and RocksDB, whose checksum is also CRC-32C (Castagnoli; ``google-crc32c``, in hardware on
x86 and ARM).  Reading stops at the first record that is cut short, whose length is implausible or whose
checksum does not match, so a flipped byte is detected instead of silently restoring another model.

:class:`Journal` is append-only.  :meth:`Journal.records` yields the good records from the start;
:meth:`Journal.recover` then cuts the file after the last good one (or after the last one its reader accepted) (copying what it drops to
``<journal>.damaged-<time>`` for inspection), so that the next append follows good data and every later
restart reads the same records.  A record cut short by a kill was never acknowledged (a step is answered
only after its record is written); anything after a damaged record is dropped with it, since each step
depends on the ones before.

:func:`write_records` writes a whole file atomically (a temporary file, then ``os.replace``) and
:func:`read_records` reads one back, raising :class:`DamagedFile` on any bad record.  With ``fsync`` every
write is also forced to the disk, and the directory after a rename: the data survives a power cut, not only
a killed process.
"""
from __future__ import annotations

import os
import struct
import time
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

import google_crc32c

__all__ = ["Journal", "DamagedFile", "frame", "write_records", "read_records"]

_HEADER = struct.Struct("<QI")
_MAX_RECORD = 1 << 36  # 64 GiB: a length above this is damage, not data


class DamagedFile(ValueError):
    """A file of records failed its checks (cut short, implausible length or checksum mismatch)."""


def frame(body: bytes) -> bytes:
    """One record: length, CRC-32C, body."""
    return _HEADER.pack(len(body), google_crc32c.value(body)) + body


def _read_one(fh: BinaryIO, offset: int) -> Tuple[Optional[bytes], Optional[str]]:
    """(body, None) for a good record at ``offset``, (None, None) at the end, (None, problem) for a bad one."""
    header = fh.read(_HEADER.size)
    if not header:
        return None, None
    if len(header) < _HEADER.size:
        return None, f"record at byte {offset} is cut short (its header)"
    length, crc = _HEADER.unpack(header)
    if length > _MAX_RECORD:
        return None, f"record at byte {offset} has an implausible length {length}"
    body = fh.read(length)
    if len(body) < length:
        return None, f"record at byte {offset} is cut short ({len(body)} of {length} bytes)"
    if google_crc32c.value(body) != crc:
        return None, f"record at byte {offset} fails its CRC-32C checksum"
    return body, None


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_records(path: str, bodies: Sequence[bytes], *, fsync: bool = False) -> None:
    """Write ``bodies`` as the records of ``path``, atomically (a kill leaves the old file or the new one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        for body in bodies:
            fh.write(frame(body))
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path)


def read_records(path: str) -> List[bytes]:
    """The records of a file written by :func:`write_records`; :class:`DamagedFile` if any fails its checks."""
    out: List[bytes] = []
    with open(path, "rb") as fh:
        while True:
            body, problem = _read_one(fh, fh.tell())
            if problem:
                raise DamagedFile(f"{path}: {problem}")
            if body is None:
                return out
            out.append(body)


class Journal:
    """An append-only file of records at ``path`` (module docstring)."""

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path, self.fsync = path, fsync
        self._fh: Optional[BinaryIO] = None
        self._good_end = 0  # byte after the last good record read by records()
        self._problem: Optional[str] = None

    def records(self) -> Iterator[bytes]:
        """The good records from the start of the file (it is not changed; see :meth:`recover`)."""
        self._good_end, self._problem = 0, None
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as fh:
            while True:
                body, problem = _read_one(fh, self._good_end)
                if body is None:
                    self._problem = problem
                    return
                yield body
                self._good_end = fh.tell()

    def recover(self, refused: Optional[str] = None) -> Optional[dict]:
        """After :meth:`records` was read -- to its end, or until its reader refused a record (``refused`` says
        why) --: cut the file after the last record read, keeping the dropped bytes in a ``.damaged-<time>``
        file.  Returns what was dropped (None if nothing was)."""
        end = self._good_end
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        if size <= end:
            return None
        kept = f"{self.path}.damaged-{int(time.time() * 1000)}"
        with open(self.path, "rb") as src, open(kept, "wb") as dst:
            src.seek(end)
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        with open(self.path, "r+b") as fh:
            fh.truncate(end)
            if self.fsync:
                os.fsync(fh.fileno())
        return {"problem": refused or self._problem, "kept_bytes": end, "dropped_bytes": size - end,
                "dropped_to": kept}

    def append(self, body: bytes) -> None:
        """Append one record and flush it to the OS (and to the disk with ``fsync``): call before the step it
        records is acknowledged."""
        if self._fh is None:
            self._fh = open(self.path, "ab")
        self._fh.write(frame(body))
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def reset(self) -> None:
        """Start an empty journal (atomically)."""
        self.close()
        write_records(self.path, [], fsync=self.fsync)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
