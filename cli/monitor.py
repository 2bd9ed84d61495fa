"""What the CLI prints while a job write takes effect: its evaluation, then its
deployment.

The two monitors live apart (``monitor_eval``: an evaluation until the scheduler
is done with it; ``monitor_deploy``: a rolling update until it ends, and Nomad's
deployment layout). This module is the one the commands import
(``from corral.cli import monitor``): it re-exports both and joins them in
:func:`monitor_register`, the exit code of ``job run`` and its kin.

Every monitor takes its clock, its sleep function and its intervals as
parameters (defaults: the real ones), so that tests drive them with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from corral.api.client import CorralClient
from corral.cli.monitor_deploy import (
    DEPLOYMENT_APPEAR_POLL,
    DEPLOYMENT_APPEAR_TIMEOUT,
    DEPLOYMENT_CANCELLED,
    DEPLOYMENT_FAILED,
    DEPLOYMENT_POLL,
    DEPLOYMENT_RETRIES,
    DEPLOYMENT_RETRY_DELAY,
    DEPLOYMENT_RUNNING,
    DEPLOYMENT_SUCCESSFUL,
    DEPLOYMENT_TERMINAL,
    DEPLOYMENT_WAIT,
    EXIT_DEPLOYMENT_FAILED,
    EXIT_INTERRUPTED,
    DeploymentMonitor,
    awaiting_promotion,
    deployment_groups_table,
    expects_deployment,
    find_deployment,
    follow_deployment,
    group_progress,
    monitor_deployment,
    monitor_job_deployment,
    render_deployment,
    rollback_version,
)
from corral.cli.monitor_eval import (
    EXIT_NOT_FOLLOWED,
    EXIT_OK,
    EXIT_PLACEMENT_FAILED,
    MONITOR_TIMEOUT,
    POLL_INTERVAL,
    EvalMonitor,
    monitor_eval,
)
from corral.proto import pb

__all__ = [
    "DEPLOYMENT_APPEAR_POLL",
    "DEPLOYMENT_APPEAR_TIMEOUT",
    "DEPLOYMENT_CANCELLED",
    "DEPLOYMENT_FAILED",
    "DEPLOYMENT_POLL",
    "DEPLOYMENT_RETRIES",
    "DEPLOYMENT_RETRY_DELAY",
    "DEPLOYMENT_RUNNING",
    "DEPLOYMENT_SUCCESSFUL",
    "DEPLOYMENT_TERMINAL",
    "DEPLOYMENT_WAIT",
    "EXIT_DEPLOYMENT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOLLOWED",
    "EXIT_OK",
    "EXIT_PLACEMENT_FAILED",
    "MONITOR_TIMEOUT",
    "POLL_INTERVAL",
    "DeploymentMonitor",
    "EvalMonitor",
    "awaiting_promotion",
    "deployment_groups_table",
    "expects_deployment",
    "find_deployment",
    "follow_deployment",
    "group_progress",
    "monitor_deployment",
    "monitor_eval",
    "monitor_job_deployment",
    "monitor_register",
    "render_deployment",
    "rollback_version",
]


def monitor_register(
    client: CorralClient,
    job_id: str,
    resp: pb.JobRegisterResponse,
    *,
    verbose: bool = False,
    out: Callable[[str], None] = click.echo,
    timeout: float = MONITOR_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Follow a job write to its end: its evaluation, then its deployment if any.

    The exit code of ``job run`` (and of ``job revert``/``job scale`` when they use
    it): the evaluation's code when it is not 0 (2 = placement failed: the rollout
    cannot finish, so it is not waited for), else the deployment's (0 successful,
    1 failed or rolled back), else 0. ``timeout`` bounds the wait for the
    evaluation (a deployment ends by itself, at its progress deadline at worst).
    """
    code = monitor_eval(
        client, resp.eval_id, verbose=verbose, out=out, timeout=timeout, clock=clock, sleep=sleep
    )
    if code != EXIT_OK:
        return code
    result = monitor_job_deployment(
        client,
        job_id,
        job_modify_index=resp.job_modify_index,
        since_index=resp.eval_create_index,
        verbose=verbose,
        out=out,
        clock=clock,
        sleep=sleep,
    )
    return code if result is None else result
