"""The deployment watcher's decisions, as a pure function of counters and a clock."""

from __future__ import annotations

from corral.proto import pb
from corral.server.deployment_watcher import CANCELLED, FAILED, SUCCESSFUL, decide
from tests.support import factories as f


def deployment(
    desired: int = 3, healthy: int = 0, unhealthy: int = 0, **group: object
) -> pb.Deployment:
    d = pb.Deployment(
        id=f.uid("d"), namespace="default", job_id="web", job_version=2, status="running"
    )
    g = d.task_groups["web"]
    g.desired_total = desired
    g.healthy_allocs = healthy
    g.unhealthy_allocs = unhealthy
    g.progress_deadline = 10
    for k, v in group.items():
        if k == "placed_canaries":
            g.placed_canaries.extend(v)  # type: ignore[arg-type]
        else:
            setattr(g, k, v)
    return d


def job_versions() -> list[pb.Job]:
    out = []
    for version, count, stable in ((2, 5, False), (1, 3, True), (0, 1, True)):
        j = f.job(count=count)
        j.version = version
        j.stable = stable
        out.append(j)
    return out


def test_progress_asks_for_an_evaluation_then_success_marks_stable() -> None:
    versions = job_versions()
    current = versions[0]
    step = decide(deployment(healthy=1), current, versions, now_ns=0, last_healthy=0)
    assert step.evaluate and not step.status
    assert not decide(deployment(healthy=1), current, versions, 0, last_healthy=1).evaluate
    done = decide(deployment(healthy=3), current, versions, 0, 2)
    assert done.status == SUCCESSFUL and done.mark_stable


def test_unhealthy_fails_and_auto_revert_picks_the_last_stable_version() -> None:
    versions = job_versions()
    d = deployment(healthy=1, unhealthy=1, auto_revert=True)
    out = decide(d, versions[0], versions, 0, 0)
    assert out.status == FAILED and "unhealthy" in out.description
    assert out.revert_to is not None and out.revert_to.version == 1
    no_revert = decide(deployment(unhealthy=1), versions[0], versions, 0, 0)
    assert no_revert.status == FAILED and no_revert.revert_to is None


def test_revert_to_an_identical_spec_is_skipped() -> None:
    versions = job_versions()
    versions[1].CopyFrom(versions[0])
    versions[1].version, versions[1].stable = 1, True
    out = decide(deployment(unhealthy=1, auto_revert=True), versions[0], versions, 0, 0)
    assert out.status == FAILED and out.revert_to is None and out.notes


def test_progress_deadline_fails_only_when_overdue_and_incomplete() -> None:
    versions = job_versions()
    d = deployment(healthy=1, require_progress_by=100)
    assert decide(d, versions[0], versions, now_ns=99, last_healthy=1).status == ""
    assert decide(d, versions[0], versions, now_ns=101, last_healthy=1).status == FAILED


def test_canaries_wait_for_promotion_or_auto_promote() -> None:
    versions = job_versions()
    waiting = deployment(desired=3, healthy=1, desired_canaries=1, placed_canaries=["c1"])
    out = decide(waiting, versions[0], versions, 0, 1)
    assert not out.status and not out.promote  # an operator promotes
    auto = deployment(
        desired=3, healthy=1, desired_canaries=1, placed_canaries=["c1"], auto_promote=True
    )
    assert decide(auto, versions[0], versions, 0, 1).promote


def test_newer_job_version_or_stop_cancels() -> None:
    versions = job_versions()
    newer = pb.Job()
    newer.CopyFrom(versions[0])
    newer.version = 3
    assert decide(deployment(), newer, versions, 0, 0).status == CANCELLED
    stopped = pb.Job()
    stopped.CopyFrom(versions[0])
    stopped.stop = True
    assert decide(deployment(), stopped, versions, 0, 0).status == CANCELLED
