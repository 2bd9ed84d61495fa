"""The server agent: state store, FSM, consensus, and the leader-only loops.

Every change is one ``pb.Command`` proposed through consensus; the endpoint
groups (``jobs``, ``nodes``, ``deployments``, ``membership``; shared parts in
``base``) build those commands (assigning IDs and the timestamp before proposing,
so that apply stays deterministic) and are what the gRPC and HTTP endpoints call.
This module assembles them and owns the core: raft plumbing, leadership terms
(``leader``), and feeding the eval broker from applied commands.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from corral import clusterkey, structs
from corral.proto import pb
from corral.server.base import Ambiguous, InvalidRequest, NotFound, ServerConfig, now_ns
from corral.server.core_gc import CoreGC
from corral.server.deployment_watcher import DeploymentWatcher
from corral.server.deployments import DeploymentEndpoints
from corral.server.drainer import Drainer
from corral.server.eval_broker import EvalBroker
from corral.server.fsm import COMMAND_SCHEMA, FSM, ApplyResult
from corral.server.group_commit import GroupCommit
from corral.server.heartbeat import HeartbeatTracker
from corral.server.jobs import JobEndpoints
from corral.server.leader import LeaderContext, LeadershipMonitor, Term
from corral.server.membership import MembershipEndpoints
from corral.server.nodes import NodeEndpoints
from corral.server.plan_apply import PlanApplier
from corral.server.raft import Consensus, LocalConsensus, PySyncObjConsensus
from corral.server.state import StateStore
from corral.server.worker import Worker

log = logging.getLogger(__name__)


class _Switch:
    """A term component made of a start and a stop function (the broker's
    enabled flag, the heartbeat tracker)."""

    def __init__(self, start: Callable[[], None], stop: Callable[[], None]) -> None:
        self.start = start
        self.stop = stop


def commanded_evals(cmd: pb.Command) -> list[pb.Evaluation]:
    """Every evaluation a command writes (its ``eval`` or ``evals`` field), whatever
    its kind: new command kinds cannot forget to feed the broker."""
    kind = cmd.WhichOneof("kind")
    if kind is None:
        return []
    body = getattr(cmd, kind)
    fields = body.DESCRIPTOR.fields_by_name
    out: list[pb.Evaluation] = []
    if "eval" in fields and body.HasField("eval"):
        out.append(body.eval)
    if "evals" in fields:
        out.extend(body.evals)
    return out


class Server(JobEndpoints, NodeEndpoints, DeploymentEndpoints, MembershipEndpoints):
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state = StateStore()
        self.fsm = FSM(self.state)
        self.fsm.listeners.append(self._on_apply)
        if config.in_memory:
            self.raft: Consensus = LocalConsensus(self.fsm, config.raft_address)
        else:
            self.raft = PySyncObjConsensus(
                self.fsm,
                config.raft_address,
                list(config.raft_peers),
                os.path.join(config.data_dir, "raft"),
                password=clusterkey.validate(config.encrypt) if config.encrypt else "",
                append_entries_period=0.003,
                bind_address=config.raft_bind,
            )
        self._group_commit = GroupCommit(self.raft)
        self.broker = EvalBroker()
        self.applier = PlanApplier(self.state, self._commit_plan)
        self.heartbeats = HeartbeatTracker(
            self._node_expired,
            min_ttl=config.min_heartbeat_ttl,
            grace=config.heartbeat_grace,
            failover_ttl=config.failover_heartbeat_ttl,
        )
        n = config.num_workers or max(os.cpu_count() or 1, 1)
        self.workers = [
            Worker(f"worker-{i}", self.state, self.broker, self.applier, self.update_evals, now_ns)
            for i in range(n)
        ]
        self._unblock = threading.Event()
        # What leader loops may use (they never get the whole server).
        self.leader_ctx = LeaderContext(
            state=self.state,
            propose=self.propose,
            propose_many=self.propose_many,
            new_eval=self._new_eval,
            now_ns=now_ns,
        )
        self.core_gc = CoreGC(self.leader_ctx)
        # Raft only enqueues leadership changes; one thread applies them in order.
        self.leadership = LeadershipMonitor(self._establish_leadership, self._revoke_leadership)
        self.raft.on_leadership(self.leadership.notify)
        self.forwarder: object | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.leadership.start()
        self.raft.start()
        threading.Thread(target=self._announce_loop, name="announce", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self.leadership.stop()  # ends the current term: every leader loop is joined
        self._group_commit.stop()
        self.raft.stop()

    def is_leader(self) -> bool:
        return self.raft.is_leader()

    @property
    def leading(self) -> bool:
        """True while a leadership term is running on this server (its loops are
        up, or starting); raft's own view is ``is_leader``."""
        return self.leadership.leading

    def wait_leader(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.leading:
                return True
            time.sleep(0.02)
        return self.leading

    def _establish_leadership(self, term: Term) -> None:
        """Start this term's leader loops (Nomad's ``establishLeadership``). Runs on
        the leadership thread; every component added to ``term`` is stopped and
        joined when the term ends, before another can start."""
        # A barrier: once our no-op is applied, the state holds every entry of
        # earlier terms, so the loops below are rebuilt from complete state.
        try:
            self.propose(pb.Command(noop=pb.NoopCommand()))
        except Exception:
            log.exception("leadership barrier failed")
        if term.ended:
            return
        term.add(self.applier)
        for w in self.workers:
            term.add(w)
        broker = self.broker
        term.add(_Switch(lambda: broker.set_enabled(True), lambda: broker.set_enabled(False)))
        snap = self.state.snapshot()
        for ev in snap.evals():
            if ev.status == structs.EVAL_STATUS_PENDING:
                broker.enqueue(ev)
            elif ev.status == structs.EVAL_STATUS_BLOCKED:
                broker.block(ev)
        alive = [n.id for n in snap.nodes() if n.status != structs.NODE_STATUS_DOWN]
        term.add(_Switch(lambda: self.heartbeats.start(alive), self.heartbeats.stop))
        term.on_stop(self._unblock.set)
        term.on_stop(self.state.wake)  # loops blocked in wait_for_index
        term.loop("unblock", self._unblock_loop)
        self._unblock.set()
        term.loop("drainer", Drainer(self.leader_ctx).run)
        term.loop("deployments", DeploymentWatcher(self.leader_ctx).run)
        term.loop("core-gc", self.core_gc.run)

    def _revoke_leadership(self) -> None:
        log.info("leadership lost; leader loops stopped")

    # ------------------------------------------------------------ raft plumbing
    def propose(self, cmd: pb.Command, timeout: float = 15.0) -> ApplyResult:
        return self.propose_many([cmd], timeout)[0]

    def propose_many(self, cmds: list[pb.Command], timeout: float = 15.0) -> list[ApplyResult]:
        """Propose commands at once (they share raft entries); one result each. The
        proposer stamps the schema and ``now``, so that the FSM never reads a clock."""
        now = now_ns()
        futures = []
        for cmd in cmds:
            cmd.schema = COMMAND_SCHEMA
            cmd.now = cmd.now or now
            futures.append(self._group_commit.submit(cmd.SerializeToString()))
        return [f.result(timeout=timeout + 5) for f in futures]

    def _on_apply(self, index: int, cmd: pb.Command) -> None:
        """FSM listener (runs on the apply path: must be quick and never block)."""
        if not self.leading:
            return
        kind = cmd.WhichOneof("kind")
        evals = commanded_evals(cmd)
        for ev in evals:
            stored = self.state.eval(ev.id)
            if stored is None:
                continue
            if stored.status == structs.EVAL_STATUS_PENDING:
                self.broker.enqueue(stored)
            elif stored.status == structs.EVAL_STATUS_BLOCKED:
                self.broker.block(stored)
        if self._frees_capacity(kind, cmd):
            self._unblock.set()

    @staticmethod
    def _frees_capacity(kind: str | None, cmd: pb.Command) -> bool:
        if kind == "node_register":
            return True
        if kind == "node_status":
            return cmd.node_status.status == structs.NODE_STATUS_READY
        if kind == "node_eligibility":
            return cmd.node_eligibility.eligibility == structs.NODE_ELIGIBLE
        if kind == "node_drain":
            return not cmd.node_drain.HasField("drain_strategy")
        if kind == "alloc_client_update":
            return any(
                a.client_status in structs.ALLOC_TERMINAL_CLIENT
                for a in cmd.alloc_client_update.allocs
            )
        if kind == "apply_plan":
            return bool(cmd.apply_plan.plan.node_update)
        return False

    def _unblock_loop(self, stop: threading.Event) -> None:
        """Turns blocked evaluations back into pending ones when capacity may have
        appeared. Coalesces bursts: one pass per wake-up."""
        while not stop.is_set():
            self._unblock.wait()
            self._unblock.clear()
            if stop.is_set():
                return
            released = self.broker.unblock_all()
            if not released:
                continue
            updates = []
            for ev in released:
                stored = self.state.eval(ev.id)
                if stored is None or stored.status != structs.EVAL_STATUS_BLOCKED:
                    continue
                upd = pb.Evaluation()
                upd.CopyFrom(stored)
                upd.status = structs.EVAL_STATUS_PENDING
                upd.status_description = "unblocked: capacity may be available"
                updates.append(upd)
            if updates:
                try:
                    self.update_evals(updates)
                except Exception:
                    log.exception("unblocking evaluations failed")

    def _commit_plan(self, plan: pb.Plan, evals: list[pb.Evaluation]) -> int:
        result = self.propose(pb.Command(apply_plan=pb.ApplyPlanCommand(plan=plan, evals=evals)))
        return result.index

    def update_evals(self, evals: list[pb.Evaluation]) -> int:
        return self.propose(pb.Command(eval_update=pb.EvalUpdateCommand(evals=evals))).index

    def _new_eval(
        self, job: pb.Job | None, namespace: str, job_id: str, trigger: str, node_id: str = ""
    ) -> pb.Evaluation:
        return pb.Evaluation(
            id=structs.new_id(),
            namespace=namespace,
            priority=job.priority if job is not None else structs.DEFAULT_PRIORITY,
            type=job.type if job is not None else structs.JOB_TYPE_SERVICE,
            triggered_by=trigger,
            job_id=job_id,
            node_id=node_id,
            status=structs.EVAL_STATUS_PENDING,
            create_time=now_ns(),
        )


__all__ = ["Ambiguous", "InvalidRequest", "NotFound", "Server", "ServerConfig", "now_ns"]
