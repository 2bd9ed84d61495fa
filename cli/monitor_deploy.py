"""Follow a deployment (a rolling update) to its end, and Nomad's deployment layout.

Deployments are followed after the evaluation, as ``nomad job run`` does: the
scheduler only starts a rollout, the deployment watcher on the leader finishes it
minutes later, and a CI job that runs ``corral job run`` needs to know how it
ended. :func:`follow_deployment` reads the deployment with blocking queries (the
server answers when the deployments table changes), prints one compact line per
group whenever its counters change (readable in a CI log, unlike a redrawn table)
and returns 0 when the deployment succeeded (or waits for a manual canary
promotion), 1 when it failed, was rolled back or was cancelled.

Why the clock, the sleep and the intervals are parameters (defaults: the real
clock, ``time.sleep`` and the constants below, bound when the module loads): a
test follows a scripted rollout with a fake clock, so the grace periods and
retry delays pass without a real wait.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import click
import grpc

from corral import structs
from corral.api.client import APIError, CorralClient
from corral.cli.format import format_kv, format_list, format_time, now_rfc3339, short_id
from corral.proto import pb

#: Deployment statuses (the server's deployment watcher decides them).
DEPLOYMENT_RUNNING = structs.DeploymentStatus.RUNNING
DEPLOYMENT_SUCCESSFUL = structs.DeploymentStatus.SUCCESSFUL
DEPLOYMENT_FAILED = structs.DeploymentStatus.FAILED
DEPLOYMENT_CANCELLED = structs.DeploymentStatus.CANCELLED
DEPLOYMENT_TERMINAL = structs.DEPLOYMENT_TERMINAL

#: How long ``job run`` looks for the deployment of the version it registered. The
#: plan that starts a rollout is committed before its evaluation completes, so the
#: deployment is normally there at once; the grace covers a follower's replication lag.
DEPLOYMENT_APPEAR_TIMEOUT = 2.0
DEPLOYMENT_APPEAR_POLL = 0.25
#: Longest wait of one blocking read of a deployment (seconds); short enough that
#: Ctrl-C and a vanished server are noticed.
DEPLOYMENT_WAIT = 10.0
#: Least time between two reads when the server does not block (or answered without
#: a change), so that a monitor never spins.
DEPLOYMENT_POLL = 0.5
#: Consecutive "cannot reach the server" answers tolerated while following (a leader
#: election in the middle of a rollout should not fail a CI job).
DEPLOYMENT_RETRIES = 5
DEPLOYMENT_RETRY_DELAY = 1.0

EXIT_OK = 0
EXIT_DEPLOYMENT_FAILED = 1
EXIT_INTERRUPTED = 130

_ROLLBACK = re.compile(r"rolling back to job version (\d+)")


# ---------------------------------------------------------------- rendering


def deployment_groups_table(d: pb.Deployment) -> str:
    """Nomad's "Deployed" table: optional columns appear only when some group uses
    them (Auto Revert, Promoted/Canaries, Progress Deadline), as ``nomad deployment
    status`` prints them."""
    names = sorted(d.task_groups)
    states = [d.task_groups[n] for n in names]
    autorevert = any(s.auto_revert for s in states)
    canaries = any(s.desired_canaries for s in states)
    deadline = any(s.progress_deadline for s in states)
    header = ["Task Group"]
    if autorevert:
        header.append("Auto Revert")
    if canaries:
        header.append("Promoted")
    header.append("Desired")
    if canaries:
        header.append("Canaries")
    header += ["Placed", "Healthy", "Unhealthy"]
    if deadline:
        header.append("Progress Deadline")
    rows = []
    for name, s in zip(names, states, strict=True):
        row: list[object] = [name]
        if autorevert:
            row.append(str(s.auto_revert).lower())
        if canaries:
            row.append(str(s.promoted).lower() if s.desired_canaries else "N/A")
        row.append(s.desired_total)
        if canaries:
            row.append(s.desired_canaries)
        row += [s.placed_allocs, s.healthy_allocs, s.unhealthy_allocs]
        if deadline:
            row.append(format_time(s.require_progress_by) if s.require_progress_by else "N/A")
        rows.append(row)
    return format_list(header, rows)


def render_deployment(d: pb.Deployment, verbose: bool = False) -> str:
    """Nomad's ``deployment status ID`` layout."""
    text = format_kv(
        [
            ("ID", short_id(d.id, verbose)),
            ("Job ID", d.job_id),
            ("Job Version", d.job_version),
            ("Status", d.status),
            ("Description", d.status_description),
        ]
    )
    if d.task_groups:
        text += "\n\nDeployed\n" + deployment_groups_table(d)
    return text


def group_progress(name: str, s: pb.DeploymentState) -> str:
    """One compact progress line of a group, e.g.
    ``web: desired 4, placed 2, healthy 1, unhealthy 0, progress deadline ...``."""
    parts = [
        f"desired {s.desired_total}",
        f"placed {s.placed_allocs}",
        f"healthy {s.healthy_allocs}",
        f"unhealthy {s.unhealthy_allocs}",
    ]
    if s.desired_canaries:
        parts.append(f"canaries {len(s.placed_canaries)}/{s.desired_canaries}")
        parts.append(f"promoted {str(s.promoted).lower()}")
    if s.require_progress_by:
        parts.append(f"progress deadline {format_time(s.require_progress_by)}")
    return f"{name}: " + ", ".join(parts)


# ---------------------------------------------------------------- reading a deployment


def rollback_version(d: pb.Deployment) -> int | None:
    """The job version an auto-revert registers again, read from the description
    the deployment watcher writes ("... - rolling back to job version N")."""
    m = _ROLLBACK.search(d.status_description)
    return int(m.group(1)) if m else None


def awaiting_promotion(d: pb.Deployment) -> bool:
    """A running deployment whose canaries are all placed and healthy and that waits
    for ``corral deployment promote`` (no ``auto_promote``): nothing more will
    happen without an operator, so a monitor stops here instead of sitting until
    the progress deadline fails the rollout."""
    if d.status != DEPLOYMENT_RUNNING:
        return False
    pending = [s for s in d.task_groups.values() if s.desired_canaries and not s.promoted]
    if not pending or any(s.auto_promote for s in pending):
        return False
    return all(
        len(s.placed_canaries) >= s.desired_canaries and s.healthy_allocs >= s.desired_canaries
        for s in pending
    )


def expects_deployment(job: pb.Job) -> bool:
    """Whether registering ``job`` can start a deployment: a service job with an
    ``update`` block (and ``max_parallel`` > 0) in some group, as the server
    canonicalizes it."""
    if job.type != structs.JOB_TYPE_SERVICE:
        return False
    return any(g.HasField("update") and g.update.max_parallel > 0 for g in job.task_groups)


def find_deployment(
    client: CorralClient,
    job_id: str,
    version: int,
    *,
    since_index: int = 0,
    timeout: float = DEPLOYMENT_APPEAR_TIMEOUT,
    poll_interval: float = DEPLOYMENT_APPEAR_POLL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> pb.Deployment | None:
    """The deployment of ``job_id`` at ``version``, looking for up to ``timeout`` s.

    Only a deployment that is running or was created at or after ``since_index``
    counts: re-running an unchanged job keeps its version, and its old, finished
    deployment must not be reported as this run's result. A server without the
    deployment service counts as "no deployment".
    """
    deadline = clock() + timeout
    while True:
        try:
            found = client.list_deployments(job_id)
        except APIError as err:
            if err.not_found or err.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        for d in sorted(found, key=lambda d: d.create_index, reverse=True):
            if d.job_id != job_id or d.job_version != version:
                continue
            if d.status == DEPLOYMENT_RUNNING or d.create_index >= since_index:
                return d
        if clock() >= deadline:
            return None
        sleep(poll_interval)


# ---------------------------------------------------------------- following one


class DeploymentMonitor:
    """Follows one deployment, printing what changes, until it ends."""

    def __init__(
        self,
        client: CorralClient,
        *,
        verbose: bool = False,
        out: Callable[[str], None] = click.echo,
        wait: float = DEPLOYMENT_WAIT,
        poll_interval: float = DEPLOYMENT_POLL,
        retries: int = DEPLOYMENT_RETRIES,
        retry_delay: float = DEPLOYMENT_RETRY_DELAY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.verbose = verbose
        self.out = out
        self.wait = wait
        self.poll_interval = poll_interval
        self.retries = retries
        self.retry_delay = retry_delay
        self.clock = clock
        self.sleep = sleep
        self.groups: dict[str, str] = {}
        self.description: str | None = None

    def info(self, msg: str) -> None:
        self.out(f"==> {now_rfc3339()}: {msg}")

    def output(self, msg: str) -> None:
        self.out(f"    {now_rfc3339()}: {msg}")

    def read(self, deployment_id: str, index: int) -> tuple[pb.Deployment, int]:
        """One (blocking) read, retried while the server cannot be reached."""
        failures = 0
        while True:
            try:
                return self.client.watch_deployment(
                    deployment_id, min_index=index, max_wait=self.wait
                )
            except APIError as err:
                if not err.unreachable or failures >= self.retries:
                    raise
                failures += 1
                self.output(f"{err.message}; retrying ({failures}/{self.retries})")
                self.sleep(self.retry_delay)

    def report(self, d: pb.Deployment) -> None:
        """Print what changed since the last read: the description, then one line
        per group whose counters moved."""
        sid = short_id(d.id, self.verbose)
        if d.status == DEPLOYMENT_RUNNING and d.status_description != self.description:
            self.output(f'Deployment "{sid}" in progress: {d.status_description or d.status}')
        self.description = d.status_description
        for name in sorted(d.task_groups):
            line = group_progress(name, d.task_groups[name])
            if self.groups.get(name) != line:
                self.groups[name] = line
                self.output(line)

    def run(self, deployment_id: str, first: tuple[pb.Deployment, int] | None) -> int:
        self.info(f'Monitoring deployment "{short_id(deployment_id, self.verbose)}"')
        index = 0
        try:
            while True:
                started = self.clock()
                if first is not None:
                    (d, new_index), first = first, None
                else:
                    d, new_index = self.read(deployment_id, index)
                self.report(d)
                if d.status in DEPLOYMENT_TERMINAL:
                    return self.finished(d)
                if awaiting_promotion(d):
                    sid = short_id(d.id, self.verbose)
                    self.info(
                        f'Deployment "{sid}" has healthy canaries and waits for promotion: '
                        f"corral deployment promote {sid}"
                    )
                    return EXIT_OK
                if new_index <= index:  # no blocking, or a wait that timed out
                    elapsed = self.clock() - started
                    if elapsed < self.poll_interval:
                        self.sleep(self.poll_interval - elapsed)
                index = max(index, new_index)
        except KeyboardInterrupt:
            sid = short_id(deployment_id, self.verbose)
            self.out("")
            self.info(
                f'Stopped monitoring; the deployment goes on. Follow it with "corral '
                f'deployment status --monitor {sid}"'
            )
            return EXIT_INTERRUPTED

    def finished(self, d: pb.Deployment) -> int:
        sid = short_id(d.id, self.verbose)
        if d.status == DEPLOYMENT_SUCCESSFUL:
            self.info(f'Deployment "{sid}" successful')
            code = EXIT_OK
        else:
            self.info(f'Deployment "{sid}" {d.status}: {d.status_description or d.status}')
            version = rollback_version(d)
            if version is not None:
                self.output(
                    f'Job "{d.job_id}" is being rolled back to version {version} '
                    f'(auto_revert); follow it with "corral job status {d.job_id}"'
                )
            code = EXIT_DEPLOYMENT_FAILED
        self.out("")
        self.out(render_deployment(d, self.verbose))
        return code


def follow_deployment(
    client: CorralClient,
    deployment_id: str,
    *,
    verbose: bool = False,
    out: Callable[[str], None] = click.echo,
    first: tuple[pb.Deployment, int] | None = None,
    wait: float = DEPLOYMENT_WAIT,
    poll_interval: float = DEPLOYMENT_POLL,
    retries: int = DEPLOYMENT_RETRIES,
    retry_delay: float = DEPLOYMENT_RETRY_DELAY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Follow a deployment until it ends (or waits for a manual promotion).

    ``first`` is a read the caller already made (``watch_deployment``'s answer),
    shown first instead of reading again. Returns 0 when successful or awaiting
    promotion, 1 when failed (rolled back or not) or cancelled, 130 when
    interrupted with Ctrl-C (the rollout goes on).
    """
    monitor = DeploymentMonitor(
        client,
        verbose=verbose,
        out=out,
        wait=wait,
        poll_interval=poll_interval,
        retries=retries,
        retry_delay=retry_delay,
        clock=clock,
        sleep=sleep,
    )
    return monitor.run(deployment_id, first)


# ---------------------------------------------------------------- after a job write


def monitor_deployment(
    client: CorralClient,
    job_id: str,
    version: int,
    out: Callable[[str], None] = click.echo,
    *,
    verbose: bool = False,
    since_index: int = 0,
    timeout: float = DEPLOYMENT_APPEAR_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int | None:
    """Find the deployment of ``job_id`` at ``version`` and follow it to its end.

    ``timeout`` is how long to look for it. ``None`` when there is none (a batch
    job, a count-only change, no ``update`` block): the caller keeps its own exit
    code. Otherwise the code of :func:`follow_deployment`.
    """
    d = find_deployment(
        client, job_id, version, since_index=since_index, timeout=timeout, clock=clock, sleep=sleep
    )
    if d is None:
        return None
    return follow_deployment(client, d.id, verbose=verbose, out=out, clock=clock, sleep=sleep)


def _registered_version(client: CorralClient, job_id: str, job_modify_index: int) -> pb.Job | None:
    """The version a registration produced: the one with its JobModifyIndex (another
    registration may have followed), else the newest."""
    try:
        versions = client.job_versions(job_id)
    except APIError as err:
        if err.not_found:  # purged meanwhile
            return None
        raise
    if not versions:
        return None
    if job_modify_index:
        for v in versions:
            if v.job_modify_index == job_modify_index:
                return v
    return max(versions, key=lambda v: v.version)


def monitor_job_deployment(
    client: CorralClient,
    job_id: str,
    *,
    job_modify_index: int = 0,
    since_index: int = 0,
    verbose: bool = False,
    out: Callable[[str], None] = click.echo,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int | None:
    """Follow the deployment a job write (run, revert, scale, auto-revert) started.

    The grace period for the deployment to appear is spent only when one can come:
    the job expects deployments and this write made a new version (an unchanged job
    keeps its old JobModifyIndex); otherwise only a running deployment of that
    version is followed.
    """
    job = _registered_version(client, job_id, job_modify_index)
    if job is None or job.type != structs.JOB_TYPE_SERVICE:
        return None
    fresh = not since_index or job.job_modify_index >= since_index
    timeout = DEPLOYMENT_APPEAR_TIMEOUT if fresh and expects_deployment(job) else 0.0
    return monitor_deployment(
        client,
        job_id,
        job.version,
        out,
        verbose=verbose,
        since_index=since_index,
        timeout=timeout,
        clock=clock,
        sleep=sleep,
    )
