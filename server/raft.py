"""Consensus behind one small interface; the only module that imports PySyncObj.

``Consensus`` is what the server needs: propose a serialized command and get the
FSM's result once it is committed and applied; know whether this server leads.
Two implementations:

* ``LocalConsensus``: applies at once in-process; for unit tests and tools that
  want a server without sockets (it is a fake, not a mock: a real, trivial engine).
* ``PySyncObjConsensus``: PySyncObj 0.3.17, with journal and snapshots in the data
  dir, ``useFork=False`` (gRPC does not survive fork), our own snapshot format
  (the FSM's protobuf bytes, never a pickle of our objects) written on a
  background thread (``BackgroundSnapshots``), and the cluster key as PySyncObj's
  ``password``. Its transport unpickles what it receives, so it never listens
  without a key (a single server makes its own, ``corral.clusterkey``), listens
  only on the address it is given, and its connections are hardened
  (``harden_connections``): a frame is unpickled only after it verified under the
  key, frame sizes are capped before anything is buffered, and what is dropped
  is logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from corral import clusterkey
from corral.server.fsm import FSM, ApplyResult, snapshot_bytes

log = logging.getLogger(__name__)


class NotLeaderError(Exception):
    """The proposal must go to the leader (``leader`` may be empty when unknown)."""

    def __init__(self, leader: str) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalError(Exception):
    """The engine could not commit the proposal (timeout, lost leadership): the
    outcome is unknown to the caller, as in any consensus system."""


class Consensus(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def propose(self, data: bytes, timeout: float = 10.0) -> ApplyResult | list[ApplyResult]: ...

    def is_leader(self) -> bool: ...

    def leader(self) -> str:
        """Raft address of the leader, or "" when unknown."""
        ...

    def self_address(self) -> str: ...

    def on_leadership(self, callback: Callable[[bool], None]) -> None:
        """``callback(True)`` when this server becomes leader, False when it stops;
        called in order on the engine's thread, so it must not block."""
        ...

    def other_peers(self) -> list[str]: ...

    def change_membership(self, address: str, add: bool) -> None:
        """Add or remove a voting peer (on the leader); blocks until committed."""
        ...

    def status(self) -> dict[str, object]: ...


class LocalConsensus:
    """A single in-process 'cluster' that commits instantly. Always the leader."""

    def __init__(self, fsm: FSM, address: str = "local") -> None:
        self._fsm = fsm
        self._address = address
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[bool], None]] = []
        self._started = False

    def start(self) -> None:
        self._started = True
        for cb in self._callbacks:
            cb(True)

    def stop(self) -> None:
        if self._started:
            self._started = False
            for cb in self._callbacks:
                cb(False)

    def propose(self, data: bytes, timeout: float = 10.0) -> ApplyResult | list[ApplyResult]:
        with self._lock:
            return self._fsm.apply(data)

    def is_leader(self) -> bool:
        return self._started

    def leader(self) -> str:
        return self._address if self._started else ""

    def self_address(self) -> str:
        return self._address

    def on_leadership(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    def status(self) -> dict[str, object]:
        return {"state": "leader" if self._started else "follower", "leader": self.leader()}

    def other_peers(self) -> list[str]:
        return []

    def change_membership(self, address: str, add: bool) -> None:
        raise ValueError("an in-memory server has no peers to change")


# PySyncObj's SERIALIZER_STATE values (not imported: this module loads PySyncObj lazily).
_NOT_SERIALIZING, _SERIALIZING, _SUCCESS, _FAILED = 0, 1, 2, 3


class BackgroundSnapshots:
    """Raft log compaction that does not stall raft.

    PySyncObj compacts by serializing the whole state on its tick thread; in-line
    (``useFork=False``, as gRPC requires) that stalled raft for ~1 s at 100,000
    allocations (protobuf serialization, then pickle and gzip level 9), as long as
    an election timeout. PySyncObj's hooks for an asynchronous serializer are used
    instead: on the raft thread, ``serialize`` only freezes a consistent view of the
    state (shallow copies of the tables, at exactly the last applied index, since
    raft applies on that same thread) and starts a thread that serializes it in
    small chunks, compresses it (zlib level 1, which releases the GIL) and renames
    it over the dump file. ``check`` reports progress on each tick; PySyncObj drops
    the journal entries the dump covers only after it reports success, so a crash
    mid-write leaves the previous dump plus the full journal.

    File format: ``MAGIC``, the length of raft's metadata (8 bytes, big-endian),
    raft's metadata (PySyncObj's pickle of its last entries and membership, as its
    own format keeps them), then the zlib-compressed ``pb.StateSnapshot`` bytes.
    Dumps in PySyncObj's own format (gzip of a pickle, from earlier versions) are
    still read.
    """

    MAGIC = b"CORRAL-SNAPSHOT-1\n"

    def __init__(self, fsm: FSM, dump_path: str) -> None:
        self._fsm = fsm
        self._path = dump_path
        self._lock = threading.Lock()
        self._state = _NOT_SERIALIZING
        self.last_freeze_s = 0.0  # raft thread: the only stall left
        self.last_write_s = 0.0  # background thread
        self.completed = 0  # dumps written
        self.restored = 0  # dumps loaded (start-up, or sent by the leader)

    def serialize(self, pysyncobj_tmp: str, raft_meta: Any) -> None:
        """PySyncObj's ``serializer`` hook (raft thread)."""
        from pysyncobj import pickle as raft_pickle

        # PySyncObj renames ``pysyncobj_tmp`` over the dump as soon as this returns;
        # never let it find one (a stale file would replace the real dump), so
        # that rename fails harmlessly and only ours, once complete, counts.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pysyncobj_tmp)
        # Never raise: PySyncObj would swallow it and wait for a result that never
        # comes, blocking compaction and snapshot sends for good. Report FAILED.
        with self._lock:
            self._state = _SERIALIZING
        try:
            t0 = time.perf_counter()
            view = self._fsm.state.snapshot()  # shallow table copies: cheap
            meta = raft_pickle.dumps(raft_meta)
            self.last_freeze_s = time.perf_counter() - t0
            threading.Thread(
                target=self._write, args=(view, meta), name="raft-snapshot", daemon=True
            ).start()
        except Exception:
            log.exception("raft snapshot failed to start; the journal keeps every entry")
            with self._lock:
                self._state = _FAILED

    def _write(self, view: Any, meta: bytes) -> None:
        t0 = time.perf_counter()
        try:
            body = zlib.compress(snapshot_bytes(view), 1)
            tmp = self._path + ".corral.tmp"
            with open(tmp, "wb") as f:
                f.write(self.MAGIC)
                f.write(struct.pack(">Q", len(meta)))
                f.write(meta)
                f.write(body)
            os.replace(tmp, self._path)
            state = _SUCCESS
        except Exception:
            log.exception("raft snapshot failed; the journal keeps every entry")
            state = _FAILED
        self.last_write_s = time.perf_counter() - t0
        with self._lock:
            self._state = state
            if state == _SUCCESS:
                self.completed += 1

    def check(self) -> int:
        """PySyncObj's ``serializeChecker`` hook: SUCCESS or FAILED once, then idle."""
        with self._lock:
            state = self._state
            if state in (_SUCCESS, _FAILED):
                self._state = _NOT_SERIALIZING
            return state

    def deserialize(self, path: str) -> Any:
        """PySyncObj's ``deserializer`` hook: restore the FSM from a dump (at start-up,
        or one the leader sent) and return raft's metadata."""
        from pysyncobj import pickle as raft_pickle

        with open(path, "rb") as f:
            raw = f.read()
        if raw.startswith(self.MAGIC):
            at = len(self.MAGIC)
            (size,) = struct.unpack(">Q", raw[at : at + 8])
            meta = raft_pickle.loads(raw[at + 8 : at + 8 + size])
            self._fsm.restore(zlib.decompress(raw[at + 8 + size :]))
            self.restored += 1
            return meta
        # PySyncObj's own format: gzip(pickle((consumers' data, *meta))).
        import gzip

        data = raft_pickle.loads(gzip.decompress(raw))
        self._fsm.restore(data[0][1])  # [SyncObj's own fields, our FSM's bytes]
        self.restored += 1
        return data[1:]


# Frame limits on a raft connection. Before a peer has proved the key, its frames
# are the handshake (a random key, then its node address): tiny. After, a frame is
# one log entry or a batch of them (PySyncObj batches up to 64 KiB, and sends a
# dump in 64 KiB pieces), and an entry is at most one gRPC request (64 MB).
PREAUTH_MAX_FRAME = 64 * 1024
MAX_FRAME = 64 * 1024 * 1024


class _DropLog:
    """At most one warning per interval about dropped connections, with a count of
    those not logged: a flood of garbage must not become a flood of log lines."""

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last = -interval
        self._suppressed = 0

    def warn(self, msg: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval:
                self._suppressed += 1
                return
            self._last = now
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg += " (and %d more dropped since the last warning)"
            args = (*args, suppressed)
        log.warning(msg, *args)


_drops = _DropLog()
dropped_frames = 0  # process-wide count, for tests and status


def _peer_of(sock: socket.socket | None) -> str:
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("?", 0)
    except OSError:
        return "a closed connection"
    return f"{host}:{port}"


def harden_connections() -> None:
    """Replace PySyncObj 0.3.17's read path of ``TcpConnection`` (idempotent).

    Its own: reads grow a ``bytes`` buffer (quadratic: a 64 MB frame costs
    hundreds of GB of copying, seen as a CPU flood from one connection), any 2^31
    length prefix is buffered before the key is checked, a connection without an
    encryptor unpickles plain frames, and failures are dropped without a word.
    Ours: a ``bytearray`` buffer; a length prefix over ``PREAUTH_MAX_FRAME`` (before
    a frame verified under the key) or ``MAX_FRAME`` (after), or negative, closes
    the connection before more is read; no encryptor, no unpickling; every drop is
    logged (rate-limited). The patched methods are private, so the version is
    pinned in pyproject.toml and checked here.
    """
    from pysyncobj import pickle as raft_pickle
    from pysyncobj import tcp_connection
    from pysyncobj.version import VERSION

    conn_cls: Any = tcp_connection.TcpConnection
    if getattr(conn_cls, "_corral_hardened", False):
        return
    if VERSION != "0.3.17":
        raise RuntimeError(
            f"corral's raft hardening is written for PySyncObj 0.3.17, not {VERSION}"
        )

    def drop(conn: Any, why: str) -> None:
        global dropped_frames
        dropped_frames += 1
        _drops.warn(
            "raft: closed a connection from %s: %s", _peer_of(conn._TcpConnection__socket), why
        )
        conn.disconnect()

    def limit(conn: Any) -> int:
        return MAX_FRAME if getattr(conn, "_corral_verified", False) else PREAUTH_MAX_FRAME

    def frame_length(conn: Any, buf: bytearray) -> int | None:
        """The length prefix at the front of ``buf`` if it is acceptable; None when
        fewer than 4 bytes are there; -1 when the connection was dropped."""
        if len(buf) < 4:
            return None
        (length,) = struct.unpack_from("i", buf, 0)
        if length < 0 or length > limit(conn):
            drop(conn, f"frame length {length} outside 0..{limit(conn)}")
            return -1
        return int(length)

    def process_read(conn: Any) -> bool:
        sock = conn._TcpConnection__socket
        try:
            incoming = sock.recv(conn._TcpConnection__recvBufferSize)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                conn.disconnect()
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or not incoming:
            conn.disconnect()
            return False
        buf = conn._TcpConnection__readBuffer
        if not isinstance(buf, bytearray):  # connect()/disconnect() reset it to bytes
            buf = conn._TcpConnection__readBuffer = bytearray(buf)
        buf += incoming
        length = frame_length(conn, buf)
        if length == -1:
            return False
        # Complete frames wait in the buffer until parsed after this read loop: never
        # let them pile up past what one frame may be.
        if len(buf) > 2 * (limit(conn) + 4):
            drop(conn, f"{len(buf)} bytes buffered unparsed")
            return False
        return True

    def process_parse(conn: Any) -> Any:
        buf = conn._TcpConnection__readBuffer
        length = frame_length(conn, buf) if isinstance(buf, bytearray) else None
        if length is None or length == -1 or len(buf) - 4 < length:
            return None
        data = bytes(buf[4 : 4 + length])
        encryptor = conn.encryptor
        if encryptor is None:
            drop(conn, "no cluster key on this connection; refusing to unpickle")
            return None
        try:
            stamp = encryptor.extract_timestamp(data)
            if stamp < conn.recvLastTimestamp:
                raise ValueError("replayed frame")
            data = encryptor.decrypt(data)
            conn.recvLastTimestamp = stamp
        except Exception:
            drop(conn, "a frame did not verify under the cluster key")
            return None
        conn._corral_verified = True
        try:
            message = raft_pickle.loads(zlib.decompress(data))
            if conn.recvRandKey:
                rand_key, message = message
                if rand_key != conn.recvRandKey:
                    raise ValueError("wrong session key")
        except Exception:
            drop(conn, "a verified frame could not be decoded")
            return None
        del buf[: 4 + length]
        return message

    conn_cls._TcpConnection__processRead = process_read
    conn_cls._TcpConnection__processParseMessage = process_parse
    conn_cls._corral_hardened = True


class PySyncObjConsensus:
    _LEADER_STATE = 2  # pysyncobj's _RAFT_STATE.LEADER

    def __init__(
        self,
        fsm: FSM,
        self_address: str,
        peers: list[str],
        data_dir: str,
        password: str = "",
        append_entries_period: float = 0.01,
        compaction_min_entries: int = 5000,
        bind_address: str = "",
    ) -> None:
        """``password``: the cluster key; without one a single server uses (or makes)
        the key in ``data_dir``, and a server with peers refuses to start.
        ``bind_address``: where the raft port listens (default: ``self_address``),
        never every interface unless asked for."""
        from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated

        other = [p for p in peers if p != self_address]
        if not password:
            if other:
                raise ValueError(
                    "a multi-server cluster needs a cluster key (--encrypt): the raft "
                    "transport must not accept unauthenticated peers"
                )
            password = clusterkey.load_or_create(data_dir)
        harden_connections()
        self._fsm = fsm
        self._address = self_address
        self._callbacks: list[Callable[[bool], None]] = []
        self._was_leader = False
        fsm_ref = fsm

        class _Replicated(SyncObjConsumer):  # type: ignore[misc]
            """Hands log entries to the FSM (snapshots: ``BackgroundSnapshots``)."""

            @replicated  # type: ignore[untyped-decorator]
            def apply_entry(self, data: bytes) -> ApplyResult | list[ApplyResult]:
                return fsm_ref.apply(data)

        os.makedirs(data_dir, exist_ok=True)
        dump = os.path.join(data_dir, "raft.snapshot")
        self.snapshots = BackgroundSnapshots(fsm, dump)
        conf = SyncObjConf(
            password=password,
            bindAddress=bind_address or self_address,
            journalFile=os.path.join(data_dir, "raft.journal"),
            fullDumpFile=dump,
            useFork=False,
            serializer=self.snapshots.serialize,
            deserializer=self.snapshots.deserialize,
            serializeChecker=self.snapshots.check,
            logCompactionMinEntries=compaction_min_entries,
            appendEntriesPeriod=append_entries_period,
            autoTickPeriod=append_entries_period,
            raftMinTimeout=0.4,
            raftMaxTimeout=1.0,
            connectionTimeout=2.0,
            connectionRetryTime=0.5,
            leaderFallbackTimeout=2.0,
            dynamicMembershipChange=True,
            commandsWaitLeader=False,
            onStateChanged=self._on_state_changed,
        )
        self._consumer = _Replicated()
        self._syncobj_cls = SyncObj
        self._conf = conf
        self._peers = other
        self._obj: SyncObj | None = None

    def start(self) -> None:
        self._obj = self._syncobj_cls(
            self._address, self._peers, conf=self._conf, consumers=[self._consumer]
        )

    def stop(self) -> None:
        if self._obj is not None:
            self._obj.destroy()
            self._obj = None
        if self._was_leader:
            self._was_leader = False
            self._notify(False)

    def _on_state_changed(self, old: int, new: int) -> None:
        """Raft's thread, in raft's order. Callbacks are called right here, in that
        order, and must not block (the server's only enqueues the change for its
        leadership thread): a thread per change let "became leader" and "lost
        leadership" race."""
        leader = new == self._LEADER_STATE
        if leader != self._was_leader:
            self._was_leader = leader
            self._notify(leader)

    def _notify(self, leader: bool) -> None:
        for cb in self._callbacks:
            try:
                cb(leader)
            except Exception:
                log.exception("leadership callback failed")

    def propose(self, data: bytes, timeout: float = 10.0) -> ApplyResult | list[ApplyResult]:
        from pysyncobj import SyncObjException

        if self._obj is None:
            raise ProposalError("raft is not running")
        if not self.is_leader():
            raise NotLeaderError(self.leader())
        try:
            result: ApplyResult | list[ApplyResult] = self._consumer.apply_entry(
                data, sync=True, timeout=timeout
            )
        except SyncObjException as exc:
            # QUEUE_FULL(1), MISSING_LEADER(2), NOT_LEADER(4): never appended, so
            # safe to retry elsewhere. Anything else (timeout, leader changed while
            # waiting) leaves the outcome unknown.
            if exc.errorCode in (1, 2, 4):
                raise NotLeaderError(self.leader()) from exc
            raise ProposalError(f"raft did not commit the write: {exc.errorCode}") from exc
        return result

    def is_leader(self) -> bool:
        return self._obj is not None and bool(self._obj._isLeader())

    def leader(self) -> str:
        """The leader's raft address, "" when unknown or unreachable.

        PySyncObj keeps naming the last leader it heard from, and a follower cut off
        from every peer never starts an election (it must be connected to someone),
        so it would name a dead leader forever; a leader we are not connected to is
        reported as unknown instead."""
        if self._obj is None:
            return ""
        node = self._obj._getLeader()
        if node is None:
            return ""
        if node != self._obj.selfNode and not self._obj.isNodeConnected(node):
            return ""
        return str(node.address)

    def self_address(self) -> str:
        return self._address

    def on_leadership(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    def status(self) -> dict[str, object]:
        if self._obj is None:
            return {"state": "stopped"}
        st: dict[str, object] = dict(self._obj.getStatus())
        return st

    def other_peers(self) -> list[str]:
        if self._obj is None:
            return list(self._peers)
        return sorted(str(n.address) for n in self._obj.otherNodes)

    def change_membership(self, address: str, add: bool) -> None:
        if self._obj is None:
            raise ProposalError("raft is not running")
        if not self.is_leader():
            raise NotLeaderError(self.leader())
        if add and address in self.other_peers():
            raise ValueError(f"{address} is already a peer")
        if not add and address not in self.other_peers():
            raise ValueError(f"{address} is not a peer")
        done = threading.Event()
        outcome: list[object] = []

        def callback(result: object, error: object) -> None:
            outcome.append(error)
            done.set()

        if add:
            self._obj.addNodeToCluster(address, callback=callback)
        else:
            self._obj.removeNodeFromCluster(address, callback=callback)
        if not done.wait(15):
            raise ProposalError(f"membership change for {address} did not commit in time")
        if outcome and outcome[0] not in (0, None):
            raise ProposalError(f"membership change for {address} failed (code {outcome[0]})")
