"""A task's runtime environment (Nomad's ``NOMAD_*`` variables) and interpolation.

Pure: no I/O, no clock. The task runner calls, in this order::

    env = build_env(alloc, task, node, alloc_dir, task_dir)
    node_vars = node_variables(node)
    config = interpolate(config, env, node_vars)

What Nomad does, and what we copy:

- Directories: ``NOMAD_ALLOC_DIR`` (shared by the group's tasks),
  ``NOMAD_TASK_DIR`` (the task's ``local/``), ``NOMAD_SECRETS_DIR``. For a
  container driver (docker) these are the paths inside the container
  (``/alloc``, ``/local``, ``/secrets``, where the docker driver mounts them);
  for host drivers (raw_exec, mock) the host paths.
- Ports, from ``alloc.allocated_resources.shared.ports``:
  ``NOMAD_IP_<l>`` / ``NOMAD_HOST_IP_<l>`` = the host IP,
  ``NOMAD_HOST_PORT_<l>`` = the host port,
  ``NOMAD_ADDR_<l>`` / ``NOMAD_HOST_ADDR_<l>`` = host ip:host port (what
  other machines dial), and ``NOMAD_PORT_<l>`` / ``NOMAD_ALLOC_PORT_<l>`` = the
  port the task must *bind*: ``to`` when the driver maps ports (docker) and
  ``to`` is set, else the host port. So a docker task with
  ``port "http" { to = 8080 }`` runs ``httpd -p ${NOMAD_PORT_http}`` = 8080
  inside the container, reachable at ``${NOMAD_ADDR_http}`` from outside.
  (Nomad gives ``to`` for every driver; for raw_exec nothing maps the port, so
  handing the task ``to`` would make it bind a port nobody reaches: we give
  the host port there.)
- Meta: job < group < task, as ``NOMAD_META_<key>`` and ``NOMAD_META_<KEY>``.
- The task's ``env`` block comes last (it may override), each value
  interpolated against everything above and the node variables.
- Keys with the ``NOMAD_{ADDR,IP,PORT,HOST_PORT,META}_`` prefixes are cleaned
  (characters outside ``[A-Za-z0-9_]`` become ``_``), as Nomad does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.proto import pb

# Drivers that map a host port to a container port (and mount the task dirs
# at fixed container paths).
PORT_MAPPING_DRIVERS = frozenset({"docker"})
CONTAINER_ALLOC_DIR = "/alloc"
CONTAINER_LOCAL_DIR = "/local"
CONTAINER_SECRETS_DIR = "/secrets"

_CLEANED_PREFIXES = (
    "NOMAD_ADDR_",
    "NOMAD_IP_",
    "NOMAD_PORT_",
    "NOMAD_HOST_PORT_",
    "NOMAD_META_",
    "NOMAD_HOST_ADDR_",
    "NOMAD_HOST_IP_",
    "NOMAD_ALLOC_PORT_",
)
_INVALID_ENV_CHARS = re.compile(r"[^A-Za-z0-9_]")
_INDEX_IN_NAME = re.compile(r"\[(\d+)\]$")
_VARIABLE = re.compile(r"\$\{([^{}]+)\}")
_ENV_INDEX = re.compile(r"""^env\[\s*["']([^"']+)["']\s*\]$""")


@dataclass(frozen=True)
class TaskDirs:
    """Where a task's directories are on the host (Nomad's layout)."""

    alloc_dir: str  # <alloc root>/alloc: shared by the group's tasks
    task_dir: str  # <alloc root>/<task>
    local_dir: str  # <task_dir>/local  -> NOMAD_TASK_DIR
    secrets_dir: str  # <task_dir>/secrets
    logs_dir: str  # <alloc_dir>/logs


def task_dirs(alloc_root: str, task_name: str) -> TaskDirs:
    """The host paths for ``task_name`` under an allocation's root directory."""
    root = alloc_root.rstrip("/")
    shared = f"{root}/alloc"
    task_dir = f"{root}/{task_name}"
    return TaskDirs(
        alloc_dir=shared,
        task_dir=task_dir,
        local_dir=f"{task_dir}/local",
        secrets_dir=f"{task_dir}/secrets",
        logs_dir=f"{shared}/logs",
    )


def clean_env_key(key: str) -> str:
    """Nomad's ``helper.CleanEnvVar``: invalid characters become ``_``."""
    return _INVALID_ENV_CHARS.sub("_", key)


def node_variables(node: pb.Node, region: str = "") -> dict[str, str]:
    """The node's interpolation variables: ``node.unique.id``, ``node.unique.name``,
    ``node.datacenter``, ``node.class``, ``node.region`` (when known),
    ``attr.<key>`` and ``meta.<key>``."""
    out = {
        "node.unique.id": node.id,
        "node.unique.name": node.name,
        "node.datacenter": node.datacenter,
        "node.class": node.node_class,
    }
    if region:
        out["node.region"] = region
    for key, value in node.attributes.items():
        out[f"attr.{key}"] = value
    for key, value in node.meta.items():
        out[f"meta.{key}"] = value
    return out


def alloc_index(alloc: pb.Allocation) -> int:
    """The N of ``job.group[N]``: from the name when it has one, else ``alloc_index``."""
    match = _INDEX_IN_NAME.search(alloc.name)
    if match:
        return int(match.group(1))
    return int(alloc.alloc_index)


def _find_group(job: pb.Job, name: str) -> pb.TaskGroup | None:
    for group in job.task_groups:
        if group.name == name:
            return group
    return None


def _join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def build_env(
    alloc: pb.Allocation,
    task: pb.Task,
    node: pb.Node,
    alloc_dir: str = "",
    task_dir: str = "",
    *,
    driver: str | None = None,
    region: str = "",
) -> dict[str, str]:
    """Nomad's runtime environment for ``task`` of ``alloc`` on ``node``.

    ``alloc_dir`` is the host path of the shared ``alloc/`` dir and ``task_dir``
    the host path of the task's own dir (with ``local/`` and ``secrets/``).
    ``driver`` defaults to ``task.driver``; it decides container vs host paths
    and which port the task binds. ``region`` defaults to the job's region, then
    ``global``. Does not include the agent's own environment (PATH...): drivers
    add what they need.
    """
    job = alloc.job
    group = _find_group(job, alloc.task_group)
    driver_name = task.driver if driver is None else driver
    maps_ports = driver_name in PORT_MAPPING_DRIVERS
    region = region or job.region or "global"

    env: dict[str, str] = {}

    # Directories.
    if maps_ports:
        env["NOMAD_ALLOC_DIR"] = CONTAINER_ALLOC_DIR
        env["NOMAD_TASK_DIR"] = CONTAINER_LOCAL_DIR
        env["NOMAD_SECRETS_DIR"] = CONTAINER_SECRETS_DIR
    else:
        if alloc_dir:
            env["NOMAD_ALLOC_DIR"] = alloc_dir
        if task_dir:
            env["NOMAD_TASK_DIR"] = f"{task_dir.rstrip('/')}/local"
            env["NOMAD_SECRETS_DIR"] = f"{task_dir.rstrip('/')}/secrets"

    # Resources: what was allocated, else what the task asked for.
    cpu = task.resources.cpu
    mem = task.resources.memory_mb
    mem_max = task.resources.memory_max_mb
    if task.name in alloc.allocated_resources.tasks:
        allocated = alloc.allocated_resources.tasks[task.name]
        cpu = int(allocated.cpu.cpu_shares) or cpu
        mem = int(allocated.memory.memory_mb) or mem
        mem_max = int(allocated.memory.memory_max_mb) or mem_max
    if cpu:
        env["NOMAD_CPU_LIMIT"] = str(cpu)
    if mem:
        env["NOMAD_MEMORY_LIMIT"] = str(mem)
    if mem_max:
        env["NOMAD_MEMORY_MAX_LIMIT"] = str(mem_max)

    # Identity.
    if alloc.id:
        env["NOMAD_ALLOC_ID"] = alloc.id
        env["NOMAD_SHORT_ALLOC_ID"] = alloc.id[:8]
    job_id = alloc.job_id or job.id
    group_name = alloc.task_group
    env["NOMAD_ALLOC_NAME"] = alloc.name or f"{job_id}.{group_name}[{alloc_index(alloc)}]"
    env["NOMAD_ALLOC_INDEX"] = str(alloc_index(alloc))
    if group_name:
        env["NOMAD_GROUP_NAME"] = group_name
    env["NOMAD_TASK_NAME"] = task.name
    if job_id:
        env["NOMAD_JOB_ID"] = job_id
    env["NOMAD_JOB_NAME"] = job.name or job_id
    if node.datacenter:
        env["NOMAD_DC"] = node.datacenter
    env["NOMAD_NAMESPACE"] = alloc.namespace or job.namespace or "default"
    env["NOMAD_REGION"] = region

    # Ports.
    default_ip = node.attributes.get("unique.network.ip-address", "") or "127.0.0.1"
    for port in alloc.allocated_resources.shared.ports:
        ip = port.host_ip or default_ip
        host_port = str(port.value)
        bind_port = str(port.to) if maps_ports and port.to > 0 else host_port
        addr = _join_host_port(ip, port.value)
        env[f"NOMAD_IP_{port.label}"] = ip
        env[f"NOMAD_HOST_IP_{port.label}"] = ip
        env[f"NOMAD_HOST_PORT_{port.label}"] = host_port
        env[f"NOMAD_ADDR_{port.label}"] = addr
        env[f"NOMAD_HOST_ADDR_{port.label}"] = addr
        env[f"NOMAD_PORT_{port.label}"] = bind_port
        env[f"NOMAD_ALLOC_PORT_{port.label}"] = bind_port

    # Meta: job < group < task, interpolated, plain and upper-cased keys.
    node_vars = node_variables(node, region)
    meta: dict[str, str] = dict(job.meta)
    if group is not None:
        meta.update(group.meta)
    meta.update(task.meta)
    for key, value in meta.items():
        key = interpolate(key, env, node_vars)
        value = interpolate(value, env, node_vars)
        env[f"NOMAD_META_{key}"] = value
        env[f"NOMAD_META_{key.upper()}"] = value

    env = {_clean_key(k): v for k, v in env.items()}

    # The task's env block last: it sees (and may override) all of the above.
    base = dict(env)
    for key, value in task.env.items():
        env[key] = interpolate(value, base, node_vars)
    return env


def _clean_key(key: str) -> str:
    if key.startswith(_CLEANED_PREFIXES):
        return clean_env_key(key)
    return key


def _lookup(name: str, env: Mapping[str, str], node_vars: Mapping[str, str]) -> str | None:
    if name in env:
        return env[name]
    if name in node_vars:
        return node_vars[name]
    if name.startswith("env."):
        return env.get(name[4:])
    match = _ENV_INDEX.match(name)
    if match:
        return env.get(match.group(1))
    return None


def interpolate(value: Any, env: Mapping[str, str], node_vars: Mapping[str, str]) -> Any:
    """``value`` with ``${NAME}`` replaced in every string, recursively through
    dicts (values only), lists and tuples; other types pass through.

    ``NAME`` is an env variable (``NOMAD_PORT_http``, also ``env.X`` and
    ``env["X"]``) or a node variable (``node.unique.id``, ``attr.kernel.name``,
    ``meta.rack``...). Unknown names stay as written, as Nomad leaves them, so
    a shell's own ``${HOME}`` in a command survives. One pass: a replacement
    is not itself re-interpolated. Returns new containers; input is not changed.
    """
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            found = _lookup(match.group(1).strip(), env, node_vars)
            return match.group(0) if found is None else found

        return _VARIABLE.sub(replace, value)
    if isinstance(value, Mapping):
        return {k: interpolate(v, env, node_vars) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, node_vars) for v in value]
    if isinstance(value, tuple):
        return tuple(interpolate(v, env, node_vars) for v in value)
    return value
