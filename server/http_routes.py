"""The Nomad endpoints corral answers, as one table (``ROUTES``), and their handlers.

Each handler reads the ``Server`` (the same methods as the gRPC endpoints) and
returns ``(payload, index)``: JSON through ``jsonmap``, so the shapes are Nomad's,
and the index for ``X-Nomad-Index``. Reads are blocking queries (``?index=&wait=``)
over the tables they show, as Nomad's are.

Methods are Nomad's: a path here asked with a method not listed for it is a 405
(``http_router``). Handlers take the API as an ``API`` (what they read of it), not
the ``HTTPAPI`` class, so this table imports nothing of the transport.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Protocol

from corral import structs
from corral.api.jsonmap import to_json
from corral.proto import pb
from corral.server.http_events import EventStream, ServiceEventLog, listed
from corral.server.http_filter import compile_filter
from corral.server.http_router import HTTPError, Request, Route, RouteTable
from corral.server.server import Server

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0


class API(Protocol):
    """What handlers use of the HTTP API object (``HTTPAPI`` is one)."""

    server: Server
    service_events: ServiceEventLog
    event_heartbeat: float
    stopping: threading.Event


def parse_wait(value: str) -> float:
    """Nomad's wait values: "5s", "1m", "300ms" (Go durations)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value.strip())
    if not m:
        raise HTTPError(400, f"invalid wait value {value!r}")
    n = float(m.group(1))
    unit = m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def block(server: Server, req: Request, *tables: str) -> int:
    """A blocking query: with ``?index=``, wait (``?wait=``, at most ``MAX_WAIT``)
    until one of ``tables`` passes that index; then their index."""
    index = int(req.query.get("index", "0") or 0)
    if index:
        q = req.query
        wait = min(parse_wait(q["wait"]) if "wait" in q else DEFAULT_WAIT, MAX_WAIT)
        server.state.wait_for_index(index, wait, *tables)
    return server.state.table_index(*tables)


def namespace(req: Request) -> str:
    return req.query.get("namespace") or structs.DEFAULT_NAMESPACE


# ---------------------------------------------------------------- jobs


def list_jobs(api: API, req: Request) -> tuple[Any, int]:
    s = api.server
    ns = namespace(req)
    idx = block(s, req, "jobs", "allocs")
    from corral.server.endpoints import job_stub

    prefix = req.query.get("prefix", "")
    return [
        to_json(job_stub(s, j))
        for j in sorted(s.state.jobs(), key=lambda j: j.id)
        if j.id.startswith(prefix) and (ns == "*" or j.namespace == ns)
    ], idx


def register_job(api: API, req: Request) -> tuple[Any, int]:
    """``PUT /v1/jobs`` and ``PUT /v1/job/<id>``: the job is the body's."""
    result = to_json(api.server.register_job(decode_job(req.body)))
    return result, api.server.state.index


def parse_job(api: API, req: Request) -> tuple[Any, int]:
    from corral import jobspec

    data = json.loads(req.body or b"{}")
    try:
        job = jobspec.parse(data.get("JobHCL", ""), "<request>")
    except jobspec.JobspecError as exc:
        raise HTTPError(400, str(exc)) from None
    return to_json(job), api.server.state.index


def read_job(api: API, req: Request) -> tuple[Any, int]:
    s = api.server
    idx = block(s, req, "jobs")
    job = s.state.job(namespace(req), req.params["job_id"])
    if job is None:
        raise HTTPError(404, "job not found")
    return job_json(s.with_status(job)), idx


def deregister_job(api: API, req: Request) -> tuple[Any, int]:
    purge = req.query.get("purge", "false").lower() == "true"
    resp = api.server.deregister_job(namespace(req), req.params["job_id"], purge)
    return to_json(resp), resp.index


def _existing_job(api: API, req: Request) -> tuple[str, str]:
    """(namespace, job ID) of the job a sub-resource is read from; 404 without it
    (checked before blocking, so a missing job never waits)."""
    ns, job_id = namespace(req), req.params["job_id"]
    if api.server.state.job(ns, job_id) is None:
        raise HTTPError(404, "job not found")
    return ns, job_id


def job_allocations(api: API, req: Request) -> tuple[Any, int]:
    ns, job_id = _existing_job(api, req)
    idx = block(api.server, req, "allocs")
    return [to_json(a) for a in api.server.state.allocs_by_job(ns, job_id)], idx


def job_evaluations(api: API, req: Request) -> tuple[Any, int]:
    ns, job_id = _existing_job(api, req)
    idx = block(api.server, req, "evals")
    return [to_json(e) for e in api.server.state.evals_by_job(ns, job_id)], idx


def job_versions(api: API, req: Request) -> tuple[Any, int]:
    ns, job_id = _existing_job(api, req)
    idx = block(api.server, req, "jobs")
    return {"Versions": [to_json(v) for v in api.server.state.job_versions(ns, job_id)]}, idx


def decode_job(body: bytes) -> pb.Job:
    """Nomad JSON through the jobspec reader: same defaults and the same
    problems as a job file (every one reported, nothing stored)."""
    from corral import jobspec
    from corral.jobspec.jsonspec import decode_json

    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "request body must be a JSON object")
    try:
        job, problems = decode_json(data, "<request>")
    except jobspec.JobspecError as exc:
        raise HTTPError(400, str(exc)) from None
    if problems:
        raise HTTPError(400, "\n".join(p.text for p in problems))
    return job


def job_json(job: pb.Job) -> dict[str, Any]:
    """Nomad's job JSON plus each group's ``Scaling`` (corral always lets a group
    be scaled, so ``Enabled`` is true): Traefik's ``allowEmptyServices`` keeps the
    router of a group scaled to 0 (503, not 404) only when it sees that."""
    data: dict[str, Any] = to_json(job)
    for group in data.get("TaskGroups") or []:
        group.setdefault(
            "Scaling",
            {
                "ID": "",
                "Type": "horizontal",
                "Target": {"Namespace": job.namespace, "Job": job.id, "Group": group["Name"]},
                "Policy": None,
                "Min": 0,
                "Max": max(int(group.get("Count") or 0), 1),
                "Enabled": True,
                "CreateIndex": job.create_index,
                "ModifyIndex": job.modify_index,
            },
        )
    return data


# ---------------------------------------------------------------- allocations, evaluations, nodes


def list_allocations(api: API, req: Request) -> tuple[Any, int]:
    idx = block(api.server, req, "allocs")
    prefix = req.query.get("prefix", "")
    return [to_json(a) for a in api.server.state.allocs() if a.id.startswith(prefix)], idx


def read_allocation(api: API, req: Request) -> tuple[Any, int]:
    idx = block(api.server, req, "allocs")
    return to_json(api.server.resolve_alloc(req.params["alloc_id"])), idx


def list_evaluations(api: API, req: Request) -> tuple[Any, int]:
    idx = block(api.server, req, "evals")
    return [to_json(e) for e in api.server.state.evals()], idx


def read_evaluation(api: API, req: Request) -> tuple[Any, int]:
    idx = block(api.server, req, "evals")
    return to_json(api.server.resolve_eval(req.params["eval_id"])), idx


def list_nodes(api: API, req: Request) -> tuple[Any, int]:
    idx = block(api.server, req, "nodes")
    return [node_json(n) for n in api.server.state.nodes()], idx


def read_node(api: API, req: Request) -> tuple[Any, int]:
    node = api.server.resolve_node(req.params["node_id"])
    idx = block(api.server, req, "nodes")
    return node_json(node), idx


def node_allocations(api: API, req: Request) -> tuple[Any, int]:
    node = api.server.resolve_node(req.params["node_id"])
    idx = block(api.server, req, "allocs")
    return [to_json(a) for a in api.server.state.allocs_by_node(node.id)], idx


def node_json(node: pb.Node) -> dict[str, Any]:
    """A node without its secret ID (the client's credential)."""
    n = pb.Node()
    n.CopyFrom(node)
    n.secret_id = ""
    return to_json(n)


# ---------------------------------------------------------------- services


def list_services(api: API, req: Request) -> tuple[Any, int]:
    """``[{"Namespace", "Services": [{"ServiceName", "Tags"}]}]``: services with
    at least one listed (passing) instance, tags the union over those."""
    ns = namespace(req)
    idx = max(block(api.server, req, "services"), 1)
    any_health = req.query.get("health", "") == "any"
    by_ns: dict[str, dict[str, set[str]]] = {}
    for svc in api.server.state.services():
        if ns != "*" and svc.namespace != ns:
            continue
        if not (any_health or listed(svc)):
            continue
        by_ns.setdefault(svc.namespace, {}).setdefault(svc.service_name, set()).update(svc.tags)
    out = [
        {
            "Namespace": name,
            "Services": [
                {"ServiceName": sname, "Tags": sorted(tags)}
                for sname, tags in sorted(services.items())
            ],
        }
        for name, services in sorted(by_ns.items())
    ]
    return out, idx


def read_service(api: API, req: Request) -> tuple[Any, int]:
    """The instances of one service (passing ones unless ``health=any``),
    through ``filter``; an unknown service is ``[]``, never a 404 (Nomad's)."""
    ns, name = namespace(req), req.params["name"]
    match = compile_filter(req.query.get("filter", ""))
    idx = max(block(api.server, req, "services"), 1)
    any_health = req.query.get("health", "") == "any"
    state = api.server.state
    if ns == "*":
        found = [s for s in state.services() if s.service_name == name]
    else:
        found = state.services_by_name(ns, name)
    found.sort(key=lambda s: (s.create_index, s.id))
    out = []
    for svc in found:
        if not (any_health or listed(svc)):
            continue
        data = to_json(svc)
        if match(data):
            out.append(data)
    return out, idx


def event_stream(api: API, req: Request) -> EventStream:
    return EventStream.open(api.service_events, req, api.event_heartbeat, api.stopping)


# ---------------------------------------------------------------- system, status, agent


def system_gc(api: API, req: Request) -> tuple[Any, int]:
    return None, api.server.system_gc().index


def status_leader(api: API, req: Request) -> tuple[Any, int]:
    return api.server.raft.leader(), api.server.state.index


def status_peers(api: API, req: Request) -> tuple[Any, int]:
    return sorted(api.server.raft_peers()), api.server.state.index


def agent_self(api: API, req: Request) -> tuple[Any, int]:
    """Enough of Nomad's ``/v1/agent/self`` for tools that probe it (the Go
    client decodes ``stats`` as map[string]map[string]string)."""
    s = api.server
    addr = s.raft.self_address()
    host, _, port = addr.rpartition(":")
    raft = {k: str(v) for k, v in s.raft.status().items()}
    body = {
        "config": {
            "Region": structs.DEFAULT_REGION,
            "Datacenter": "dc1",
            "NodeName": addr,
            "Version": {"Version": "corral", "VersionPrerelease": "", "Revision": ""},
            "Server": {"Enabled": True},
            "Client": {"Enabled": False},
        },
        "member": {
            "Name": addr,
            "Addr": host,
            "Port": int(port) if port.isdigit() else 0,
            "Status": "alive",
            "Tags": {"role": "nomad", "region": structs.DEFAULT_REGION, "dc": "dc1"},
        },
        "stats": {
            "raft": raft,
            "nomad": {
                "leader": str(s.is_leader()).lower(),
                "known_leader": str(bool(s.raft.leader())).lower(),
                "leader_addr": s.raft.leader(),
            },
        },
    }
    return body, s.state.index


WRITE = ("PUT", "POST")

ROUTES: RouteTable[API] = RouteTable(
    [
        Route("GET", "/v1/jobs", list_jobs),
        Route(WRITE, "/v1/jobs", register_job),
        Route(WRITE, "/v1/jobs/parse", parse_job),
        Route("GET", "/v1/job/{job_id}", read_job),
        Route(WRITE, "/v1/job/{job_id}", register_job),
        Route("DELETE", "/v1/job/{job_id}", deregister_job),
        Route("GET", "/v1/job/{job_id}/allocations", job_allocations),
        Route("GET", "/v1/job/{job_id}/evaluations", job_evaluations),
        Route("GET", "/v1/job/{job_id}/versions", job_versions),
        Route("GET", "/v1/allocations", list_allocations),
        Route("GET", "/v1/allocation/{alloc_id}", read_allocation),
        Route("GET", "/v1/evaluations", list_evaluations),
        Route("GET", "/v1/evaluation/{eval_id}", read_evaluation),
        Route("GET", "/v1/nodes", list_nodes),
        Route("GET", "/v1/node/{node_id}", read_node),
        Route("GET", "/v1/node/{node_id}/allocations", node_allocations),
        Route("GET", "/v1/services", list_services),
        Route("GET", "/v1/service/{name...}", read_service),
        Route("GET", "/v1/event/stream", event_stream),
        Route(WRITE, "/v1/system/gc", system_gc),
        Route("GET", "/v1/status/leader", status_leader),
        Route("GET", "/v1/status/peers", status_peers),
        Route("GET", "/v1/agent/self", agent_self),
    ]
)
