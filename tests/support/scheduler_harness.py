"""The scheduler test harness (Nomad's ``scheduler/testing.go`` Harness).

``SchedulerHarness`` runs the pure scheduler against a real in-memory state store
driven through the FSM, and submits each plan to its ``Planner``, which commits it
and records it; multi-step scenarios (fail, drain, join) then read naturally.

The planner is also a drop-in plan applier for a real ``Worker`` (the server's
wiring: ``Worker(name, h.state, broker, h.planner, h.update_evals, now)``). Given a
refusal policy it refuses part of a plan, as Nomad's Harness does with a
``Planner`` such as ``RejectPlan``, so that the worker's retry path can be tested.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from corral import structs
from corral.proto import pb
from corral.scheduler import SchedulerResult, compute_plan
from corral.server.fsm import FSM
from corral.server.plan_apply import PlanApplier, PlanResult
from corral.server.state import StateStore
from tests.support import factories as f

# ------------------------------------------------------------------ refusal policies

RefusePolicy = Callable[[int, pb.Plan], Iterable[str]]
"""Given a submission's number (0 for the first) and its plan, the IDs of the nodes
whose placements the planner refuses (nodes without placements are ignored)."""


def accept_all(submission: int, plan: pb.Plan) -> Iterable[str]:
    """Nothing is refused: every plan is committed as it is."""
    return ()


def refuse_all(submission: int, plan: pb.Plan) -> Iterable[str]:
    """Nomad's ``RejectPlan``: every placement of every plan is refused."""
    return list(plan.node_allocation)


def refuse_first(nodes: int = 1) -> RefusePolicy:
    """The first plan loses its placements on its first ``nodes`` nodes (by ID), as
    if another worker had filled them meanwhile; later plans are accepted."""

    def policy(submission: int, plan: pb.Plan) -> Iterable[str]:
        return sorted(plan.node_allocation)[:nodes] if submission == 0 else ()

    return policy


# ------------------------------------------------------------------ planner


@dataclass(frozen=True)
class Submission:
    """One plan handed to the planner, and what became of it."""

    plan: pb.Plan  # as submitted; ``plan.snapshot_index`` is the snapshot it was planned on
    evals: list[pb.Evaluation]  # committed only with a fully applied plan
    always: list[pb.Evaluation]  # committed with whatever part of the plan is applied
    refused: list[str]  # nodes whose placements were refused
    index: int  # the state's index afterwards (unchanged when nothing was committed)
    committed: bool


class Planner(PlanApplier):
    """A plan applier that commits plans as they are (no fit re-check, like Nomad's
    Harness), except the placements its policy refuses, and records every submission.

    It follows the plan applier's rules otherwise: ``evals`` commit only with a fully
    applied plan, ``always`` with any part of it, and a refused ``all_at_once`` plan
    is refused whole. ``submit`` applies at once (no applier thread), as Nomad's
    ``Harness.SubmitPlan`` does."""

    def __init__(self, harness: SchedulerHarness, refuse: RefusePolicy = accept_all) -> None:
        super().__init__(harness.state, harness.commit_plan)
        self.harness = harness
        self.refuse = refuse
        self.submissions: list[Submission] = []

    def submit(
        self,
        plan: pb.Plan,
        evals: list[pb.Evaluation],
        always: list[pb.Evaluation] | None = None,
    ) -> Future[PlanResult]:
        fut: Future[PlanResult] = Future()
        try:
            fut.set_result(self.apply(plan, evals, always))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def apply(
        self, plan: pb.Plan, evals: list[pb.Evaluation], always: list[pb.Evaluation] | None = None
    ) -> PlanResult:
        always = list(always or [])
        asked = set(self.refuse(len(self.submissions), plan))
        refused = sorted(n for n in plan.node_allocation if n in asked)
        accepted = plan
        if refused:
            accepted = pb.Plan()
            accepted.CopyFrom(plan)
            if plan.all_at_once:
                refused = sorted(plan.node_allocation)
                accepted.ClearField("node_allocation")
                accepted.ClearField("node_update")
            for node_id in refused:
                if node_id in accepted.node_allocation:
                    del accepted.node_allocation[node_id]
        commit_evals = (list(evals) if not refused else []) + always
        committed = not refused or bool(
            accepted.node_allocation or accepted.node_update or commit_evals
        )
        if committed:
            index = self.harness.commit_plan(accepted, commit_evals)
        else:
            index = self.harness.state.index
        self.submissions.append(Submission(plan, list(evals), always, refused, index, committed))
        return PlanResult(index=index, rejected_nodes=refused)


# ------------------------------------------------------------------ harness


class SchedulerHarness:
    """A state store driven through the FSM, plus the scheduler; each ``process``
    submits the plan and its follow-up evaluations to ``planner``, as the server's
    worker does (without completing the evaluation: that is the worker's part)."""

    def __init__(self, refuse: RefusePolicy = accept_all) -> None:
        self.fsm = FSM(StateStore())
        self.results: list[SchedulerResult] = []
        self.planner = Planner(self, refuse)

    @property
    def state(self) -> StateStore:
        return self.fsm.state

    @property
    def plans(self) -> list[pb.Plan]:
        """Every plan submitted so far (Nomad's ``Harness.Plans``)."""
        return [s.plan for s in self.planner.submissions]

    def apply(self, **kind: object) -> int:
        """Apply one command through the FSM; return its index."""
        result = self.fsm.apply(f.command(**kind))
        assert not isinstance(result, list)
        assert not result.error, result.error
        return result.index

    # what the server commits for a worker
    def commit_plan(self, plan: pb.Plan, evals: list[pb.Evaluation]) -> int:
        return self.apply(apply_plan=pb.ApplyPlanCommand(plan=plan, evals=evals))

    def update_evals(self, evals: list[pb.Evaluation]) -> int:
        return self.apply(eval_update=pb.EvalUpdateCommand(evals=evals))

    # nodes
    def add_node(self, n: pb.Node | None = None) -> pb.Node:
        n = n or f.node()
        self.apply(node_register=pb.NodeRegisterCommand(node=n))
        return n

    def set_node_status(self, node_id: str, status: str) -> None:
        self.apply(node_status=pb.NodeStatusCommand(node_id=node_id, status=status))

    def set_eligibility(self, node_id: str, eligible: bool) -> None:
        value = structs.NODE_ELIGIBLE if eligible else structs.NODE_INELIGIBLE
        self.apply(node_eligibility=pb.NodeEligibilityCommand(node_id=node_id, eligibility=value))

    def drain(self, node_id: str, deadline: int = 0, ignore_system_jobs: bool = False) -> None:
        strategy = pb.DrainStrategy(
            deadline=deadline, ignore_system_jobs=ignore_system_jobs, started_at=f.FAKE_NOW
        )
        self.apply(node_drain=pb.NodeDrainCommand(node_id=node_id, drain_strategy=strategy))

    # jobs and evaluations
    def register(self, j: pb.Job) -> pb.Evaluation:
        ev = f.evaluation(j)
        self.apply(job_register=pb.JobRegisterCommand(job=j, eval=ev))
        return ev

    def job(self, job_id: str = "web") -> pb.Job:
        j = self.state.job(structs.DEFAULT_NAMESPACE, job_id)
        assert j is not None
        return j

    def evaluate(
        self, job_id: str = "web", trigger: str = structs.TRIGGER_NODE_UPDATE
    ) -> pb.Evaluation:
        return f.evaluation(self.job(job_id), trigger)

    def process(
        self, ev: pb.Evaluation, seed: int = 1, now_ns: int = 0, algorithm: str = "binpack"
    ) -> SchedulerResult:
        result = compute_plan(
            self.state.snapshot(),
            ev,
            seed,
            lambda: f.uid("c"),
            now_ns=now_ns,
            algorithm=algorithm,
        )
        self.results.append(result)
        self.planner.submit(result.plan, [], list(result.followup_evals)).result()
        return result

    def run(
        self, j: pb.Job, seed: int = 1, now_ns: int = 0, algorithm: str = "binpack"
    ) -> SchedulerResult:
        return self.process(self.register(j), seed, now_ns, algorithm)

    def reevaluate(
        self, job_id: str = "web", seed: int = 1, now_ns: int = 0, algorithm: str = "binpack"
    ) -> SchedulerResult:
        return self.process(self.evaluate(job_id), seed, now_ns, algorithm)

    # allocations
    def allocs(self, job_id: str = "web") -> list[pb.Allocation]:
        return sorted(
            self.state.allocs_by_job(structs.DEFAULT_NAMESPACE, job_id),
            key=lambda a: (a.alloc_index, a.create_index, a.id),
        )

    def live(self, job_id: str = "web") -> list[pb.Allocation]:
        return [
            a
            for a in self.allocs(job_id)
            if a.desired_status == structs.ALLOC_DESIRED_RUN and not structs.is_client_terminal(a)
        ]

    def set_client_status(
        self, allocs: list[pb.Allocation], status: str, finished_at: int = 0
    ) -> None:
        """What a client reports; ``finished_at`` dates a failure (task finish time)."""
        ups = []
        for a in allocs:
            up = pb.Allocation(id=a.id, client_status=status)
            if finished_at:
                up.task_states["server"].state = structs.TASK_STATE_DEAD
                up.task_states["server"].failed = status == structs.ALLOC_CLIENT_FAILED
                up.task_states["server"].finished_at = finished_at
            ups.append(up)
        self.apply(alloc_client_update=pb.AllocClientUpdateCommand(allocs=ups))

    def mark_running(self, job_id: str = "web") -> None:
        pending = [a for a in self.live(job_id) if a.client_status == structs.ALLOC_CLIENT_PENDING]
        if pending:
            self.set_client_status(pending, structs.ALLOC_CLIENT_RUNNING)

    def set_transition(self, alloc_ids: list[str], **transition: bool) -> None:
        t = {a: pb.DesiredTransition(**transition) for a in alloc_ids}
        self.apply(alloc_desired_transition=pb.AllocDesiredTransitionCommand(transitions=t))


__all__ = [
    "Planner",
    "RefusePolicy",
    "SchedulerHarness",
    "Submission",
    "accept_all",
    "refuse_all",
    "refuse_first",
]
