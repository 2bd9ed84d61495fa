"""The server agent: state store, FSM, consensus, and the leader-only loops.

Every change is one ``pb.Command`` proposed through consensus; the methods here
build those commands (assigning IDs and the timestamp before proposing, so that
apply stays deterministic) and are what the gRPC and HTTP endpoints call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from corral import clusterkey, structs
from corral.proto import pb
from corral.server.core_gc import CoreGC
from corral.server.eval_broker import EvalBroker
from corral.server.fsm import COMMAND_SCHEMA, FSM, ApplyResult
from corral.server.group_commit import GroupCommit
from corral.server.heartbeat import HeartbeatTracker
from corral.server.plan_apply import PlanApplier
from corral.server.raft import Consensus, LocalConsensus, PySyncObjConsensus
from corral.server.state import StateStore
from corral.server.worker import Worker

log = logging.getLogger(__name__)


class InvalidRequest(Exception):
    """Bad input: nothing was changed. ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class NotFound(Exception):
    pass


class Ambiguous(Exception):
    pass


@dataclass
class ServerConfig:
    data_dir: str = ""
    raft_address: str = "127.0.0.1:4648"
    raft_bind: str = ""  # where the raft port listens; "" = raft_address
    raft_peers: tuple[str, ...] = ()
    encrypt: str = ""
    num_workers: int = 0  # 0 = one per core
    min_heartbeat_ttl: float = 10.0
    heartbeat_grace: float = 10.0
    failover_heartbeat_ttl: float = 300.0
    in_memory: bool = False  # LocalConsensus: unit tests
    name: str = ""
    rpc_address: str = ""  # advertised gRPC address of this server
    http_address: str = ""


def now_ns() -> int:
    return time.time_ns()


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


class Server:
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
        self._leader_lock = threading.Lock()
        self._leading = False
        self._unblock = threading.Event()
        self._unblock_thread: threading.Thread | None = None
        self.core_gc = CoreGC(self, now_ns)
        self.raft.on_leadership(self._on_leadership)
        self.forwarder: object | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.raft.start()
        threading.Thread(target=self._announce_loop, name="announce", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._on_leadership(False)
        self._group_commit.stop()
        self.raft.stop()

    # ------------------------------------------------------------ membership
    def self_member(self) -> pb.ServerMember:
        addr = self.raft.self_address()
        return pb.ServerMember(
            id=addr,
            name=self.config.name or addr,
            address=addr.rsplit(":", 1)[0],
            raft_address=addr,
            rpc_address=self.config.rpc_address,
            http_address=self.config.http_address,
            voter=True,
        )

    def _announce_loop(self) -> None:
        """Make sure the state knows how to reach this server (forwarding needs
        the leader's gRPC address). Retries until it sticks; re-checks rarely."""
        import grpc

        from corral.proto import rpc

        while not self._stopping.is_set():
            me = self.self_member()
            stored = self.state.server(me.raft_address)
            if stored is None or stored.rpc_address != me.rpc_address or stored.name != me.name:
                try:
                    if self.is_leader():
                        self.propose(
                            pb.Command(server_register=pb.ServerRegisterCommand(member=me))
                        )
                    else:
                        addr = self.leader_rpc_addr()
                        if addr:
                            with grpc.insecure_channel(addr) as ch:
                                rpc.OperatorServiceStub(ch).RegisterServer(me, timeout=5)
                except Exception as exc:
                    log.debug("announcing this server failed: %s", exc)
                self._stopping.wait(0.5)
            else:
                self._stopping.wait(5.0)

    def leader_rpc_addr(self) -> str:
        leader = self.raft.leader()
        if not leader:
            return ""
        if leader == self.raft.self_address():
            return self.config.rpc_address
        member = self.state.server(leader)
        return member.rpc_address if member is not None else ""

    def members(self) -> list[pb.ServerMember]:
        """Every known server with live raft facts (never stored in the FSM)."""
        leader = self.raft.leader()
        status = self.raft.status()
        peers = set(self.raft_peers())
        out = []
        known = {m.raft_address: m for m in self.state.servers()}
        for addr in sorted(peers):
            m = pb.ServerMember()
            if addr in known:
                m.CopyFrom(known[addr])
            else:
                m.id = m.name = m.raft_address = addr
                m.address = addr.rsplit(":", 1)[0]
            m.leader = addr == leader
            m.voter = addr in peers
            if addr == self.raft.self_address():
                m.raft_state = "leader" if self.is_leader() else "follower"
                applied = status.get("last_applied")
                m.last_index = applied if isinstance(applied, int) else self.state.index
                m.healthy = True
            else:
                connected = status.get(f"partner_node_status_server_{addr}")
                m.healthy = connected == 2 or (connected is None and m.leader)
                m.raft_state = "leader" if m.leader else "follower"
                match = status.get(f"match_idx_server_{addr}")
                m.last_index = int(match) if isinstance(match, int) else 0
            out.append(m)
        return out

    def raft_peers(self) -> list[str]:
        return [self.raft.self_address(), *self.raft.other_peers()]

    def change_membership(self, address: str, add: bool) -> None:
        if not address or ":" not in address:
            raise InvalidRequest([f"address {address!r} must be host:port of a raft peer"])
        if address == self.raft.self_address() and not add:
            raise InvalidRequest(["a server cannot remove itself; remove it from another server"])
        try:
            self.raft.change_membership(address, add)
        except ValueError as exc:
            raise InvalidRequest([str(exc)]) from None
        if not add:
            # Forget its addresses too, so it no longer shows up in members.
            self.propose(pb.Command(noop=pb.NoopCommand()))

    def is_leader(self) -> bool:
        return self.raft.is_leader()

    def wait_leader(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._leading:
                return True
            time.sleep(0.02)
        return self._leading

    def _on_leadership(self, leader: bool) -> None:
        with self._leader_lock:
            if leader == self._leading:
                return
            self._leading = leader
            if leader:
                self._establish_leadership()
            else:
                self._revoke_leadership()

    def _establish_leadership(self) -> None:
        log.info("became leader; starting leader loops")
        # A barrier: once our no-op is applied, the state holds every entry of
        # earlier terms, so the loops below are rebuilt from complete state.
        try:
            self.propose(pb.Command(noop=pb.NoopCommand()))
        except Exception:
            log.exception("leadership barrier failed")
        self.broker.set_enabled(True)
        self.applier.start()
        for w in self.workers:
            w.start()
        snap = self.state.snapshot()
        for ev in snap.evals():
            if ev.status == structs.EVAL_STATUS_PENDING:
                self.broker.enqueue(ev)
            elif ev.status == structs.EVAL_STATUS_BLOCKED:
                self.broker.block(ev)
        self.heartbeats.start([n.id for n in snap.nodes() if n.status != structs.NODE_STATUS_DOWN])
        self._unblock_thread = threading.Thread(
            target=self._unblock_loop, name="unblock", daemon=True
        )
        self._unblock_thread.start()
        self._unblock.set()
        from corral.server.drainer import Drainer

        Drainer(self).start()
        from corral.server.deployment_watcher import DeploymentWatcher

        DeploymentWatcher(self, lambda: self._leading, now_ns).start()
        self.core_gc.start()

    def _revoke_leadership(self) -> None:
        log.info("leadership lost; stopping leader loops")
        self.heartbeats.stop()
        self.broker.set_enabled(False)
        for w in self.workers:
            w.stop()
        self.applier.stop()
        self._unblock.set()

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
        if not self._leading:
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

    def _unblock_loop(self) -> None:
        """Turns blocked evaluations back into pending ones when capacity may have
        appeared. Coalesces bursts: one pass per wake-up."""
        while self._leading:
            self._unblock.wait()
            self._unblock.clear()
            if not self._leading:
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

    # ------------------------------------------------------------ jobs
    @staticmethod
    def canonical_job(job: pb.Job) -> tuple[pb.Job, list[str]]:
        """A copy of ``job`` with Nomad's defaults filled in, and every problem with
        it: what register, plan and validate all check, the same way."""
        from corral import jobspec

        job = _copy(job)
        structs.canonicalize(job)
        return job, jobspec.validate(job)

    def register_job(self, job: pb.Job) -> pb.JobRegisterResponse:
        job, problems = self.canonical_job(job)
        if problems:
            raise InvalidRequest(problems)
        ev = self._new_eval(job, job.namespace, job.id, structs.TRIGGER_JOB_REGISTER)
        result = self.propose(pb.Command(job_register=pb.JobRegisterCommand(job=job, eval=ev)))
        if result.error:
            raise InvalidRequest([result.error])
        stored = self.state.job(job.namespace, job.id)
        return pb.JobRegisterResponse(
            eval_id=ev.id,
            eval_create_index=result.index,
            job_modify_index=stored.job_modify_index if stored is not None else result.index,
            index=result.index,
        )

    def deregister_job(self, namespace: str, job_id: str, purge: bool) -> pb.JobDeregisterResponse:
        namespace = namespace or structs.DEFAULT_NAMESPACE
        job = self.state.job(namespace, job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        ev = self._new_eval(job, namespace, job_id, structs.TRIGGER_JOB_DEREGISTER)
        result = self.propose(
            pb.Command(
                job_deregister=pb.JobDeregisterCommand(
                    namespace=namespace, job_id=job_id, purge=purge, eval=ev
                )
            )
        )
        if result.error:
            raise NotFound(result.error)
        return pb.JobDeregisterResponse(eval_id=ev.id, index=result.index)

    def scale_job(
        self, namespace: str, job_id: str, group: str, count: int
    ) -> pb.JobRegisterResponse:
        namespace = namespace or structs.DEFAULT_NAMESPACE
        job = self.state.job(namespace, job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if not group:
            if len(job.task_groups) != 1:
                names = ", ".join(g.name for g in job.task_groups)
                raise InvalidRequest([f"job {job_id!r} has several groups ({names}): name one"])
            group = job.task_groups[0].name
        if structs.group_by_name(job, group) is None:
            raise InvalidRequest([f"job {job_id!r} has no group {group!r}"])
        if count < 0:
            raise InvalidRequest([f"count must be >= 0, got {count}"])
        if job.type == structs.JOB_TYPE_SYSTEM:
            raise InvalidRequest(["system jobs cannot be scaled: they run one allocation per node"])
        ev = self._new_eval(job, namespace, job_id, structs.TRIGGER_SCALING)
        result = self.propose(
            pb.Command(
                job_scale=pb.JobScaleCommand(
                    namespace=namespace, job_id=job_id, group=group, count=count, eval=ev
                )
            )
        )
        if result.error:
            raise InvalidRequest([result.error])
        stored = self.state.job(namespace, job_id)
        return pb.JobRegisterResponse(
            eval_id=ev.id,
            eval_create_index=result.index,
            job_modify_index=stored.job_modify_index if stored is not None else 0,
            index=result.index,
        )

    def revert_job(
        self, namespace: str, job_id: str, version: int, enforce_prior: int | None
    ) -> pb.JobRegisterResponse:
        namespace = namespace or structs.DEFAULT_NAMESPACE
        current = self.state.job(namespace, job_id)
        if current is None:
            raise NotFound(f"job {job_id!r} not found")
        if enforce_prior is not None and current.version != enforce_prior:
            raise InvalidRequest(
                [f"current job version is {current.version}, not {enforce_prior} as enforced"]
            )
        if version == current.version:
            raise InvalidRequest([f"job is already at version {version}"])
        old = self.state.job_version(namespace, job_id, version)
        if old is None:
            known = ", ".join(str(v.version) for v in self.state.job_versions(namespace, job_id))
            raise NotFound(f"job {job_id!r} has no version {version} (tracked: {known})")
        return self.register_job(old)

    def plan_job(self, job: pb.Job) -> pb.JobPlanResponse:
        """A dry run: the scheduler on a snapshot with the job swapped in; nothing
        is committed."""
        from corral.scheduler import compute_plan
        from corral.server.dryrun import OverlaySnapshot, annotate, spec_diff

        job, problems = self.canonical_job(job)
        if problems:
            raise InvalidRequest(problems)
        snap = self.state.snapshot()
        current = snap.job(job.namespace, job.id)
        proposed = _copy(job)
        from corral.server.fsm import spec_changed

        changed_spec = current is None or spec_changed(current, proposed)
        proposed.version = (
            (current.version + 1)
            if (current is not None and changed_spec)
            else (current.version if current is not None else 0)
        )
        overlay = OverlaySnapshot(snap, proposed)
        ev = self._new_eval(proposed, job.namespace, job.id, structs.TRIGGER_JOB_REGISTER)
        result = compute_plan(overlay, ev, 1)
        resp = pb.JobPlanResponse(
            diff=spec_diff(current, proposed),
            job_modify_index=current.job_modify_index if current is not None else 0,
        )
        for group, ann in annotate(result.plan, snap, proposed).items():
            resp.annotations[group].CopyFrom(ann)
        for group, metric in result.failed_tg_allocs.items():
            resp.failed_tg_allocs[group].CopyFrom(metric)
        resp.changed = changed_spec or any(
            a.place or a.stop or a.destructive_update for a in resp.annotations.values()
        )
        return resp

    # ------------------------------------------------------------ deployments
    def resolve_deployment(self, prefix: str) -> pb.Deployment:
        d = self.state.deployment(self._resolve("deployments", prefix, "deployment"))
        assert d is not None
        return d

    def promote_deployment(self, prefix: str, groups: list[str]) -> pb.DeploymentWriteResponse:
        d = self.resolve_deployment(prefix)
        if d.status != "running":
            raise InvalidRequest(
                [f"deployment {d.id[:8]} is {d.status}: only running ones promote"]
            )
        if not any(g.desired_canaries for g in d.task_groups.values()):
            raise InvalidRequest([f"deployment {d.id[:8]} has no canaries to promote"])
        job = self.state.job(d.namespace, d.job_id)
        ev = self._new_eval(job, d.namespace, d.job_id, "deployment-promotion")
        ev.deployment_id = d.id
        result = self.propose(
            pb.Command(
                deployment_promote=pb.DeploymentPromoteCommand(
                    deployment_id=d.id, groups=groups, evals=[ev]
                )
            )
        )
        if result.error:
            raise InvalidRequest([result.error])
        return pb.DeploymentWriteResponse(eval_id=ev.id, index=result.index)

    def fail_deployment(self, prefix: str) -> pb.DeploymentWriteResponse:
        from corral.server.deployment_watcher import decide

        d = self.resolve_deployment(prefix)
        if d.status != "running":
            raise InvalidRequest([f"deployment {d.id[:8]} is already {d.status}"])
        job = self.state.job(d.namespace, d.job_id)
        cmd = pb.DeploymentStatusCommand(
            update=pb.DeploymentStatusUpdate(
                deployment_id=d.id,
                status="failed",
                status_description="Deployment marked as failed",
            )
        )
        reverted = ""
        if any(g.auto_revert for g in d.task_groups.values()) and job is not None:
            # Reuse the watcher's revert rule on a deployment forced unhealthy.
            forced = pb.Deployment()
            forced.CopyFrom(d)
            for g in forced.task_groups.values():
                g.unhealthy_allocs = max(g.unhealthy_allocs, 1)
            decision = decide(
                forced, job, self.state.job_versions(d.namespace, d.job_id), now_ns(), 0
            )
            if decision.revert_to is not None:
                cmd.revert_job.CopyFrom(decision.revert_to)
                reverted = str(decision.revert_to.version)
                cmd.update.status_description += f" - rolling back to job version {reverted}"
        ev = self._new_eval(job, d.namespace, d.job_id, "deployment-watcher")
        cmd.evals.append(ev)
        result = self.propose(pb.Command(deployment_status=cmd))
        if result.error:
            raise InvalidRequest([result.error])
        return pb.DeploymentWriteResponse(
            eval_id=ev.id, index=result.index, reverted_job_version=reverted
        )

    # ------------------------------------------------------------ services
    def update_services(self, req: pb.NodeServicesRequest) -> int:
        node = self.state.node(req.node_id)
        if node is None:
            raise NotFound(f"node {req.node_id} not registered")
        if node.secret_id and req.secret_id != node.secret_id:
            raise InvalidRequest(["node secret ID does not match"])
        index = self.state.index
        if req.delete_ids or req.delete_alloc_ids:
            index = self.propose(
                pb.Command(
                    service_delete=pb.ServiceDeleteCommand(
                        ids=list(req.delete_ids), alloc_ids=list(req.delete_alloc_ids)
                    )
                )
            ).index
        if req.upserts:
            for svc in req.upserts:
                svc.node_id = node.id
                svc.datacenter = svc.datacenter or node.datacenter
                svc.namespace = svc.namespace or structs.DEFAULT_NAMESPACE
            index = self.propose(
                pb.Command(service_upsert=pb.ServiceUpsertCommand(services=list(req.upserts)))
            ).index
        return index

    # ------------------------------------------------------------ nodes
    def register_node(self, node: pb.Node) -> pb.NodeHeartbeatResponse:
        problems = []
        if not node.id:
            problems.append("node ID is required")
        if not node.secret_id:
            problems.append("node secret ID is required")
        if problems:
            raise InvalidRequest(problems)
        node = _copy(node)
        node.status = structs.NODE_STATUS_READY
        evals = self._evals_for_node(node.id, structs.TRIGGER_NODE_UPDATE)
        result = self.propose(
            pb.Command(node_register=pb.NodeRegisterCommand(node=node, evals=evals))
        )
        if result.error:
            raise InvalidRequest([result.error])
        ttl = self.heartbeats.ttl()
        self.heartbeats.reset(node.id, ttl)
        return pb.NodeHeartbeatResponse(
            heartbeat_ttl=int(ttl * 1e9), index=result.index, leader=self.raft.leader()
        )

    def system_gc(self) -> pb.SystemGCResponse:
        """``corral system gc``: collect every terminal evaluation and allocation now."""
        return self.core_gc.run_once(threshold_ns=0)

    def heartbeat(self, node_id: str, secret_id: str) -> pb.NodeHeartbeatResponse:
        return self.heartbeat_many([pb.NodeHeartbeatRequest(node_id=node_id, secret_id=secret_id)])

    def heartbeat_many(self, beats: list[pb.NodeHeartbeatRequest]) -> pb.NodeHeartbeatResponse:
        """Heartbeats of one or many nodes. All are checked before anything is
        written; the nodes coming back (down, initializing) are marked ready
        together, in shared raft entries: one write each in turn took longer than
        a heartbeat's deadline for a fleet of thousands of nodes."""
        back: list[str] = []
        for hb in beats:
            node = self.state.node(hb.node_id)
            if node is None:
                raise NotFound(f"node {hb.node_id} not registered")
            if node.secret_id and hb.secret_id != node.secret_id:
                raise InvalidRequest([f"node {hb.node_id}: node secret ID does not match"])
            if node.status != structs.NODE_STATUS_READY:
                back.append(hb.node_id)
        index = self.state.index
        if back:
            cmds = [
                pb.Command(
                    node_status=pb.NodeStatusCommand(
                        node_id=node_id,
                        status=structs.NODE_STATUS_READY,
                        evals=self._evals_for_node(node_id, structs.TRIGGER_NODE_UPDATE),
                    )
                )
                for node_id in back
            ]
            index = max(r.index for r in self.propose_many(cmds))
        ttl = self.heartbeats.ttl()
        for hb in beats:
            self.heartbeats.reset(hb.node_id, ttl)
        return pb.NodeHeartbeatResponse(
            heartbeat_ttl=int(ttl * 1e9), index=index, leader=self.raft.leader()
        )

    def _node_expired(self, node_id: str) -> None:
        node = self.state.node(node_id)
        if node is None or node.status == structs.NODE_STATUS_DOWN:
            return
        log.warning("node %s missed its heartbeat; marking it down", node_id)
        evals = self._evals_for_node(node_id, structs.TRIGGER_NODE_UPDATE)
        self.propose(
            pb.Command(
                node_status=pb.NodeStatusCommand(
                    node_id=node_id,
                    status=structs.NODE_STATUS_DOWN,
                    status_description="missed heartbeat",
                    evals=evals,
                )
            )
        )

    def _evals_for_node(
        self, node_id: str, trigger: str, system_jobs: bool = True
    ) -> list[pb.Evaluation]:
        """One evaluation per job with live allocations on the node, plus every
        system job (a node that appears, returns or changes may need one)."""
        jobs: dict[tuple[str, str], pb.Job | None] = {}
        for alloc in self.state.allocs_by_node(node_id):
            if not structs.is_alloc_terminal(alloc):
                key = (alloc.namespace, alloc.job_id)
                jobs[key] = self.state.job(*key)
        if system_jobs:
            for job in self.state.jobs():
                if job.type == structs.JOB_TYPE_SYSTEM and not job.stop:
                    jobs[(job.namespace, job.id)] = job
        return [self._new_eval(job, ns, jid, trigger, node_id) for (ns, jid), job in jobs.items()]

    def set_drain(
        self, node_id: str, enable: bool, deadline_ns: int, ignore_system: bool, mark_eligible: bool
    ) -> pb.WriteResponse:
        node = self.resolve_node(node_id)
        cmd = pb.NodeDrainCommand(node_id=node.id, mark_eligible=mark_eligible)
        evals: list[pb.Evaluation] = []
        if enable:
            cmd.drain_strategy.deadline = deadline_ns
            cmd.drain_strategy.ignore_system_jobs = ignore_system
            cmd.drain_strategy.started_at = now_ns()
            evals = self._evals_for_node(node.id, structs.TRIGGER_NODE_DRAIN)
        cmd.evals.extend(evals)
        result = self.propose(pb.Command(node_drain=cmd))
        if result.error:
            raise NotFound(result.error)
        return pb.WriteResponse(index=result.index, eval_ids=[e.id for e in evals])

    def set_eligibility(self, node_id: str, eligible: bool) -> pb.WriteResponse:
        node = self.resolve_node(node_id)
        evals = self._evals_for_node(node.id, structs.TRIGGER_NODE_UPDATE) if eligible else []
        result = self.propose(
            pb.Command(
                node_eligibility=pb.NodeEligibilityCommand(
                    node_id=node.id,
                    eligibility=structs.NODE_ELIGIBLE if eligible else structs.NODE_INELIGIBLE,
                    evals=evals,
                )
            )
        )
        return pb.WriteResponse(index=result.index, eval_ids=[e.id for e in evals])

    # ------------------------------------------------------------ allocations
    def update_allocs_from_client(self, allocs: list[pb.Allocation]) -> int:
        if not allocs:
            return self.state.index
        result = self.propose(
            pb.Command(alloc_client_update=pb.AllocClientUpdateCommand(allocs=allocs))
        )
        return result.index

    def node_allocations(self, node_id: str) -> list[pb.Allocation]:
        """The node's allocations, each with its job version attached (what a
        client needs to run it)."""
        out = []
        for alloc in self.state.allocs_by_node(node_id):
            full = _copy(alloc)
            job = self.state.job_version(alloc.namespace, alloc.job_id, alloc.job_version)
            if job is not None:
                full.job.CopyFrom(job)
            out.append(full)
        return out

    # ------------------------------------------------------------ lookups
    def _resolve(self, table: str, prefix: str, what: str) -> str:
        if not prefix:
            raise InvalidRequest([f"{what} ID is required"])
        matches = self.state.find_by_prefix(table, prefix)
        if not matches:
            raise NotFound(f"no {what} with ID prefix {prefix!r}")
        if len(matches) > 1:
            shown = ", ".join(m[:8] for m in matches[:10])
            raise Ambiguous(f"prefix {prefix!r} matched {len(matches)} {what}s: {shown}")
        return matches[0]

    def resolve_alloc(self, prefix: str) -> pb.Allocation:
        alloc = self.state.alloc(self._resolve("allocs", prefix, "allocation"))
        assert alloc is not None
        return alloc

    def resolve_node(self, prefix: str) -> pb.Node:
        node = self.state.node(self._resolve("nodes", prefix, "node"))
        assert node is not None
        return node

    def resolve_eval(self, prefix: str) -> pb.Evaluation:
        ev = self.state.eval(self._resolve("evals", prefix, "evaluation"))
        assert ev is not None
        return ev

    def job_status(self, job: pb.Job) -> str:
        """Nomad's job status, derived from allocations (never stored)."""
        allocs = self.state.allocs_by_job(job.namespace, job.id)
        if any(not structs.is_alloc_terminal(a) for a in allocs):
            return structs.JOB_STATUS_RUNNING
        if job.stop:
            return structs.JOB_STATUS_DEAD
        if job.type == structs.JOB_TYPE_BATCH and allocs:
            return structs.JOB_STATUS_DEAD
        evals = self.state.evals_by_job(job.namespace, job.id)
        if any(
            e.status in (structs.EVAL_STATUS_PENDING, structs.EVAL_STATUS_BLOCKED) for e in evals
        ):
            return structs.JOB_STATUS_PENDING
        return structs.JOB_STATUS_PENDING if not allocs else structs.JOB_STATUS_DEAD

    def with_status(self, job: pb.Job) -> pb.Job:
        out = _copy(job)
        out.status = self.job_status(job)
        return out


def _copy(msg: _M) -> _M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


from typing import TypeVar  # noqa: E402

from google.protobuf.message import Message  # noqa: E402

_M = TypeVar("_M", bound=Message)

__all__ = ["Ambiguous", "InvalidRequest", "NotFound", "Server", "ServerConfig", "Callable"]
