"""The check runners: one http (2xx = passing) or tcp (connect) check, run once.

``run_check(spec)`` never raises: a target that does not answer, refuses, resets
or times out is ``critical`` with the reason as output. The verdicts
(``HEALTH_PASSING``, ``HEALTH_CRITICAL``, and ``HEALTH_NONE`` for a registration
without checks) are the ``Health`` values the servers list instances by. Kept
apart from the timers that schedule checks and the hook that acts on verdicts, as
Nomad keeps its check runners (``client/serviceregistration/checks``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time

from corral.client.services.build import CheckSpec

HEALTH_PASSING = "passing"
HEALTH_CRITICAL = "critical"
# A registration without checks: counts as passing (listed).
HEALTH_NONE = ""

MAX_CHECK_OUTPUT = 512


def _dial_host(address: str) -> str:
    """Where to connect for a check: a wildcard bind is checked on loopback."""
    if address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address.strip("[]")


def run_check(spec: CheckSpec) -> tuple[str, str]:
    """Run one check: (``passing``|``critical``, output). Never raises."""
    host = _dial_host(spec.address)
    try:
        if spec.port <= 0:
            return HEALTH_CRITICAL, f"no port to check for {spec.service_id}"
        if spec.type == "tcp":
            with socket.create_connection((host, spec.port), timeout=spec.timeout):
                pass
            return HEALTH_PASSING, f"TCP connect {host}:{spec.port}: Success"
        if spec.type == "http":
            return _http_check(spec, host)
        return HEALTH_CRITICAL, f"unsupported check type {spec.type!r}"
    except Exception as exc:  # refused, timed out, reset, bad response...
        return HEALTH_CRITICAL, _clip(f"{spec.type} check of {host}:{spec.port} failed: {exc}")


def _http_check(spec: CheckSpec, host: str) -> tuple[str, str]:
    deadline = time.monotonic() + spec.timeout
    conn: http.client.HTTPConnection
    if spec.protocol == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, spec.port, timeout=spec.timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, spec.port, timeout=spec.timeout)
    try:
        conn.request(
            spec.method,
            spec.path,
            headers={"User-Agent": "corral health check", "Connection": "close"},
        )
        resp = conn.getresponse()
        resp.read(64 * 1024)
        if time.monotonic() > deadline:
            return HEALTH_CRITICAL, f"HTTP {spec.method} {spec.path}: timed out"
        verdict = HEALTH_PASSING if 200 <= resp.status < 300 else HEALTH_CRITICAL
        return verdict, f"HTTP {spec.method} {spec.path}: {resp.status} {resp.reason}"
    finally:
        conn.close()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHECK_OUTPUT else text[: MAX_CHECK_OUTPUT - 3] + "..."
