"""What every part of the server shares: its errors, its configuration, the
attributes and core methods the endpoint groups use, and the lookups.

``Server`` (``server/server.py``) is assembled from endpoint groups, one module per
concern, as Nomad keeps ``job_endpoint.go``, ``node_endpoint.go``...:
``jobs.JobEndpoints``, ``nodes.NodeEndpoints``, ``deployments.DeploymentEndpoints``,
``membership.MembershipEndpoints``. Each derives from ``ServerBase``, which declares
what they may use (set up by ``Server.__init__``), so that each group type-checks
on its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import Message

from corral import structs
from corral.proto import pb
from corral.server.fsm import ApplyResult
from corral.server.state import StateStore

if TYPE_CHECKING:
    from corral.server.core_gc import CoreGC
    from corral.server.eval_broker import EvalBroker
    from corral.server.heartbeat import HeartbeatTracker
    from corral.server.raft import Consensus

_M = TypeVar("_M", bound=Message)


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


def _copy(msg: _M) -> _M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


class ServerBase:
    """Attributes and core methods every endpoint group uses; ``Server`` provides
    them. Also the lookups, which need only the state."""

    config: ServerConfig
    state: StateStore
    raft: Consensus
    broker: EvalBroker
    heartbeats: HeartbeatTracker
    core_gc: CoreGC
    _stopping: threading.Event

    def propose(self, cmd: pb.Command, timeout: float = 15.0) -> ApplyResult:
        raise NotImplementedError

    def propose_many(self, cmds: list[pb.Command], timeout: float = 15.0) -> list[ApplyResult]:
        raise NotImplementedError

    def update_evals(self, evals: list[pb.Evaluation]) -> int:
        raise NotImplementedError

    def is_leader(self) -> bool:
        raise NotImplementedError

    def _new_eval(
        self, job: pb.Job | None, namespace: str, job_id: str, trigger: str, node_id: str = ""
    ) -> pb.Evaluation:
        raise NotImplementedError

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
