"""The monitors' timing: every wait goes through the clock and sleep they are given.

Against the scripted fake (an evaluation that stays pending, a deployment that
stops changing) with a :class:`FakeClock`, so minutes of polling pass at once and
each wait the monitor asked for is checked.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from corral import structs
from corral.api.client import CorralClient
from corral.cli import monitor
from corral.proto import pb
from tests.support.fake_server import DeploymentStep, FakeClock, FakeServer
from tests.support.inproc_server import sample_job


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        server.state.add_node("n1")
        yield server


def test_eval_deadline_and_poll_interval_are_parameters(fake: FakeServer) -> None:
    fake.state.pending_reads = 10_000
    ev = fake.state.register(sample_job("stuck"))
    clock = FakeClock()
    seen: list[str] = []
    with CorralClient(fake.address) as client:
        code = monitor.monitor_eval(
            client,
            ev.id,
            out=seen.append,
            poll_interval=30.0,
            clock=clock.monotonic,
            sleep=clock.sleep,
        )
    assert code == monitor.EXIT_NOT_FOLLOWED == 1
    assert clock.sleeps == [30.0] * 10  # the default deadline, 300 s, in 30 s polls
    assert (
        f'is still pending after 300s; is a scheduler running? Follow it with "corral eval status {ev.id[:8]}"'
        in seen[-1]
    )


def test_eval_monitor_waits_for_the_next_evaluation_on_its_clock(fake: FakeServer) -> None:
    """A chained evaluation (``next_eval`` with a ``wait``, as a delayed reschedule):
    the monitor announces the wait, spends it on its clock, then follows the next."""
    first = fake.run_job(sample_job("web"))
    later = pb.Evaluation()
    later.CopyFrom(first)
    later.id = str(uuid.uuid4())
    later.previous_eval = first.id
    first.next_eval = later.id
    first.wait = 90 * structs.SECOND
    fake.state.evals[later.id] = later
    clock = FakeClock()
    seen: list[str] = []
    with CorralClient(fake.address) as client:
        code = monitor.monitor_eval(
            client, first.id, out=seen.append, clock=clock.monotonic, sleep=clock.sleep
        )
    assert code == 0
    assert clock.sleeps == [90.0]
    waits = [x for x in seen if "Monitoring next evaluation" in x]
    assert len(waits) == 1
    assert re.search(rf'==> \S+: Monitoring next evaluation "{later.id[:8]}" in 90s$', waits[0])
    assert seen[-1].endswith(f'Evaluation "{later.id[:8]}" finished with status "complete"')


class _FinishAfter(FakeClock):
    """A clock on which the deployment ends (scripted) after ``n`` waits."""

    def __init__(self, fake: FakeServer, deployment_id: str, n: int) -> None:
        super().__init__()
        self.fake = fake
        self.deployment_id = deployment_id
        self.n = n

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if len(self.sleeps) == self.n:
            self.fake.state.deployment_steps[self.deployment_id] = [
                DeploymentStep(status="successful", description="Deployment completed")
            ]


def test_deployment_reads_are_paced_when_nothing_changes(fake: FakeServer) -> None:
    """The fake does not block: with nothing new, the monitor waits its poll
    interval between reads instead of spinning."""
    fake.run_job(sample_job("web"))
    d = fake.state.add_deployment("web")
    clock = _FinishAfter(fake, d.id, 3)
    seen: list[str] = []
    with CorralClient(fake.address) as client:
        code = monitor.follow_deployment(
            client,
            d.id,
            out=seen.append,
            poll_interval=2.0,
            clock=clock.monotonic,
            sleep=clock.sleep,
        )
    assert code == monitor.EXIT_OK
    assert clock.sleeps == [2.0, 2.0, 2.0]
    assert any(f'Deployment "{d.id[:8]}" successful' in line for line in seen)
