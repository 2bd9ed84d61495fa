"""Service registrations, health checks and allocation health on a client.

One module per piece, from pure to threaded (as Nomad keeps its service hooks
apart); this package re-exports what the rest of the client and the tests use:

* ``build``: ``build_services(alloc, node)``, the registrations an allocation
  makes (group- and task-level ``service`` blocks) with Nomad's IDs, names
  interpolated on the client and the address and port of the port label. Pure.
* ``checks``: ``run_check(spec)``, one http (2xx = passing) or tcp (connect)
  check. Never raises: a target that does not answer is ``critical``.
* ``health``: ``HealthTracker``, the allocation's deployment health (Nomad's
  rules). Pure, with the clock passed in.
* ``timers``: ``TimerWheel``, one timer thread for every check of every allocation
  on the client, running the checks on a small thread pool.
* ``registry``: ``ServiceRegistry``, the client's registrations as the servers
  should see them, sent with ``NodeService.UpdateServices`` in batches and only
  when something changed.
* ``hook``: ``AllocServices``, the per-allocation hook that the alloc runner
  drives (register, check, report health, restart on ``check_restart``,
  deregister), and ``ServiceRuntime``, what the hooks of one client share.

Only instances whose checks pass are listed by the servers (``Health`` ``passing``,
or ``""`` when a service has no checks), which is what keeps Traefik away from a
failing instance.
"""

from __future__ import annotations

from corral.client.services.build import (
    CheckSpec,
    PlannedService,
    build_services,
    interpolate_name,
    service_id,
)
from corral.client.services.checks import (
    HEALTH_CRITICAL,
    HEALTH_NONE,
    HEALTH_PASSING,
    run_check,
)
from corral.client.services.health import HealthTracker
from corral.client.services.hook import AllocServices, CheckState, ServiceRuntime
from corral.client.services.registry import ServiceRegistry
from corral.client.services.timers import Timer, TimerWheel

__all__ = [
    "HEALTH_CRITICAL",
    "HEALTH_NONE",
    "HEALTH_PASSING",
    "AllocServices",
    "CheckSpec",
    "CheckState",
    "HealthTracker",
    "PlannedService",
    "ServiceRegistry",
    "ServiceRuntime",
    "Timer",
    "TimerWheel",
    "build_services",
    "interpolate_name",
    "run_check",
    "service_id",
]
