"""Follow an evaluation until the scheduler is done with it, printing Nomad's lines.

Why poll: the contract offers ``EvalService.Get`` and the scheduler usually finishes
in milliseconds, so a 100 ms poll shows the result without a noticeable wait and
without a streaming API. A deadline keeps a CLI from hanging forever when no
scheduler is running (e.g. a cluster without a leader); the user is told how to
look later.

Why the clock, the sleep and the intervals are parameters (defaults: the real
clock, ``time.sleep`` and the constants below, bound when the module loads): a
test drives the monitor with a fake clock, so a deadline of minutes passes without
a real wait, and nothing reads a module constant a test may have patched.

Returned codes: 0 when every allocation was placed, 2 when placement failed (or the
scheduler failed the evaluation), 1 when the evaluation could not be followed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from corral import structs
from corral.api.client import APIError, CorralClient
from corral.cli.format import now_rfc3339, placement_failures, short_id
from corral.proto import pb

#: Seconds between two reads of a pending evaluation.
POLL_INTERVAL = 0.1
#: Seconds an evaluation may stay pending before the monitor gives up.
MONITOR_TIMEOUT = 300.0

EXIT_OK = 0
EXIT_NOT_FOLLOWED = 1
EXIT_PLACEMENT_FAILED = 2


class EvalMonitor:
    """One ``corral job run``'s view of an evaluation and those it chains to."""

    def __init__(
        self,
        client: CorralClient,
        *,
        verbose: bool = False,
        out: Callable[[str], None] = click.echo,
        timeout: float = MONITOR_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.verbose = verbose
        self.out = out
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.clock = clock
        self.sleep = sleep

    def info(self, msg: str) -> None:
        self.out(f"==> {now_rfc3339()}: {msg}")

    def output(self, msg: str) -> None:
        self.out(f"    {now_rfc3339()}: {msg}")

    def sid(self, value: str) -> str:
        return short_id(value, self.verbose)

    def run(self, eval_id: str) -> int:
        deadline = self.clock() + self.timeout
        self.info(f'Monitoring evaluation "{self.sid(eval_id)}"')
        last_status: str = structs.EVAL_STATUS_PENDING
        seen_job = seen_node = seen_deployment = False
        while True:
            ev = self.client.get_eval(eval_id)
            if ev.node_id and not seen_node:
                seen_node = True
                self.output(f'Evaluation triggered by node "{self.sid(ev.node_id)}"')
            if ev.job_id and not seen_job:
                seen_job = True
                self.output(f'Evaluation triggered by job "{ev.job_id}"')
            if ev.deployment_id and not seen_deployment:
                seen_deployment = True
                self.output(f'Evaluation within deployment: "{self.sid(ev.deployment_id)}"')
            if ev.status == structs.EVAL_STATUS_PENDING:
                if self.clock() >= deadline:
                    self.info(
                        f'Evaluation "{self.sid(ev.id)}" is still pending after '
                        f"{self.timeout:g}s; is a scheduler running? Follow it with "
                        f'"corral eval status {self.sid(ev.id)}"'
                    )
                    return EXIT_NOT_FOLLOWED
                self.sleep(self.poll_interval)
                continue
            self._allocations(ev)
            if ev.status != last_status:
                self.output(f'Evaluation status changed: "{last_status}" -> "{ev.status}"')
                last_status = ev.status
            code = self._finished(ev)
            if ev.next_eval:
                if ev.wait:
                    self.info(
                        f'Monitoring next evaluation "{self.sid(ev.next_eval)}" in '
                        f"{ev.wait / 1e9:g}s"
                    )
                    self.sleep(ev.wait / 1e9)
                return max(code, self.run(ev.next_eval))
            return code

    def _allocations(self, ev: pb.Evaluation) -> None:
        """Print the allocations this evaluation created or modified."""
        if not ev.job_id:
            return
        try:
            allocs = self.client.job_allocations(ev.job_id)
        except APIError as err:
            if err.not_found:  # purged job
                return
            raise
        for a in sorted(allocs, key=lambda a: (a.task_group, a.alloc_index, a.id)):
            if a.eval_id != ev.id:
                continue
            if a.create_index and ev.create_index and a.create_index < ev.create_index:
                self.output(
                    f'Allocation "{self.sid(a.id)}" modified: node "{self.sid(a.node_id)}", '
                    f'group "{a.task_group}"'
                )
            elif a.desired_status == structs.ALLOC_DESIRED_RUN:
                self.output(
                    f'Allocation "{self.sid(a.id)}" created: node "{self.sid(a.node_id)}", '
                    f'group "{a.task_group}"'
                )

    def _finished(self, ev: pb.Evaluation) -> int:
        failed = ev.status == structs.EVAL_STATUS_FAILED
        if not ev.failed_tg_allocs:
            self.info(f'Evaluation "{self.sid(ev.id)}" finished with status "{ev.status}"')
            if failed:
                if ev.status_description:
                    self.output(f"Reason: {ev.status_description}")
                return EXIT_PLACEMENT_FAILED
            return EXIT_OK
        self.info(
            f'Evaluation "{self.sid(ev.id)}" finished with status "{ev.status}" '
            "but failed to place all allocations:"
        )
        stamp = now_rfc3339()
        for line in placement_failures(ev):
            if line.startswith("Task Group"):
                self.out(f"    {stamp}: {line}")
            else:
                self.out(f"    {line}")
        if ev.blocked_eval:
            self.output(
                f'Evaluation "{self.sid(ev.blocked_eval)}" waiting for additional '
                "capacity to place remainder"
            )
        elif ev.status == structs.EVAL_STATUS_BLOCKED:
            self.output(
                f'Evaluation "{self.sid(ev.id)}" waiting for additional capacity to place remainder'
            )
        return EXIT_PLACEMENT_FAILED


def monitor_eval(
    client: CorralClient,
    eval_id: str,
    *,
    verbose: bool = False,
    timeout: float = MONITOR_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
    out: Callable[[str], None] = click.echo,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Follow ``eval_id`` (and the evals it chains to) and return the exit code."""
    monitor = EvalMonitor(
        client,
        verbose=verbose,
        out=out,
        timeout=timeout,
        poll_interval=poll_interval,
        clock=clock,
        sleep=sleep,
    )
    return monitor.run(eval_id)
