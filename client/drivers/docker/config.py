"""The docker driver's task config: validation, and the container it asks for.

Task config keys (Nomad's names):

``image``         required; must exist locally (one pull is tried, briefly)
``command``       overrides the image's CMD; with ``args`` appended
``args``          list of strings; without ``command`` they replace the CMD
``entrypoint``    list of strings (or one string) overriding the ENTRYPOINT
``ports``         list of port labels from the group's network block: each
                  publishes ``host_ip:host_port`` -> container port ``to``
                  (``host_port`` when ``to`` is 0), tcp and udp like Nomad
``labels``        extra container labels (dict)
``work_dir``      the container's working directory
``network_mode``  e.g. ``bridge`` (default), ``host``, ``none``
``init``          bool: run docker's tiny init as PID 1 (reaps, forwards signals)

Resources: ``memory_mb`` is the hard limit (``memory_max_mb``, when larger,
becomes the hard limit and ``memory_mb`` the reservation, as in Nomad); swap is
disabled by setting memory+swap to the same limit; ``cpu_mhz`` becomes
``cpu_shares`` (Nomad's convention). Env is ``cfg.env``. Labels carry
``corral.alloc_id``, ``corral.task_name``, ``corral.job_name``,
``corral.node_id`` plus ``cfg.labels``. The container is named
``<task>-<alloc_id>`` like Nomad's, so a leftover from a crashed attempt is
found (and replaced) by name.

Task directories: when they exist on the host, ``cfg.alloc_dir`` is mounted at
``/alloc``, ``<task_dir>/local`` at ``/local`` and ``<task_dir>/secrets`` at
``/secrets`` (Nomad's layout; ``taskenv.build_env(driver="docker")`` gives the
matching ``NOMAD_*_DIR`` values).

``validate_config`` is pure (job validation uses it too) and
``container_options`` only reads the task config and which task directories
exist: neither talks to the engine, which is the driver's part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from corral.client.drivers.base import DriverError, TaskConfig

_KNOWN_KEYS = frozenset(
    {
        "image",
        "command",
        "args",
        "entrypoint",
        "ports",
        "labels",
        "work_dir",
        "network_mode",
        "init",
    }
)
LABEL_ALLOC_ID = "corral.alloc_id"
LABEL_TASK_NAME = "corral.task_name"
LABEL_JOB_NAME = "corral.job_name"
LABEL_NODE_ID = "corral.node_id"


def container_name(task_name: str, alloc_id: str) -> str:
    """Nomad's container name: ``<task>-<alloc_id>``."""
    return f"{task_name}-{alloc_id}"


def validate_config(config: dict[str, Any]) -> list[str]:
    """Problems with a task's docker ``config`` block, as readable sentences."""
    problems = [
        f"unknown config key {key!r} for the docker driver"
        for key in sorted(set(config) - _KNOWN_KEYS)
    ]
    image = config.get("image")
    if not isinstance(image, str) or not image.strip():
        problems.append("image is required and must be a non-empty string")
    for key in ("command", "work_dir", "network_mode"):
        if key in config and not isinstance(config[key], str):
            problems.append(f"{key} must be a string")
    for key in ("args", "ports"):
        value = config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{key} must be a list of strings")
    entrypoint = config.get("entrypoint", [])
    if not isinstance(entrypoint, str) and (
        not isinstance(entrypoint, list) or not all(isinstance(v, str) for v in entrypoint)
    ):
        problems.append("entrypoint must be a list of strings")
    labels = config.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        problems.append("labels must be a map of strings")
    if "init" in config and not isinstance(config["init"], bool):
        problems.append("init must be true or false")
    return problems


@dataclass(frozen=True)
class ContainerOptions:
    """What to ask the engine for: the container's name, the keyword arguments of
    ``APIClient.create_host_config`` and those of ``APIClient.create_container``
    (all but ``host_config``, which the driver makes from ``host``)."""

    name: str
    host: dict[str, Any]
    create: dict[str, Any]


def container_options(cfg: TaskConfig, *, mount_task_dirs: bool) -> ContainerOptions:
    """The container of a task whose config passed ``validate_config``. Raises
    DriverError for a port label that is not in the group's network block."""
    conf = cfg.config
    name = container_name(cfg.task_name, cfg.alloc_id)
    labels = {
        LABEL_ALLOC_ID: cfg.alloc_id,
        LABEL_TASK_NAME: cfg.task_name,
        LABEL_JOB_NAME: cfg.job_name,
        LABEL_NODE_ID: cfg.node_id,
    }
    labels.update(cfg.labels)
    labels.update(conf.get("labels", {}))

    network_mode = str(conf.get("network_mode", "") or "")
    exposed, bindings = _port_bindings(cfg, conf.get("ports", []), network_mode)

    args = [str(a) for a in conf.get("args", [])]
    command: list[str] | None = None
    if conf.get("command"):
        command = [str(conf["command"]), *args]
    elif args:
        command = args
    entrypoint = conf.get("entrypoint")
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]

    host_kwargs: dict[str, Any] = {}
    if bindings:
        host_kwargs["port_bindings"] = bindings
    if network_mode:
        host_kwargs["network_mode"] = network_mode
    hard_mb = max(cfg.memory_mb, cfg.memory_max_mb)
    if hard_mb > 0:
        host_kwargs["mem_limit"] = hard_mb * 1024 * 1024
        host_kwargs["memswap_limit"] = hard_mb * 1024 * 1024
        if cfg.memory_max_mb > cfg.memory_mb > 0:
            host_kwargs["mem_reservation"] = cfg.memory_mb * 1024 * 1024
    if cfg.cpu_mhz > 0:
        host_kwargs["cpu_shares"] = max(2, cfg.cpu_mhz)  # the kernel's minimum is 2
    if conf.get("init"):
        host_kwargs["init"] = True
    binds = _binds(cfg, mount_task_dirs)
    if binds:
        host_kwargs["binds"] = binds

    create_kwargs: dict[str, Any] = {
        "name": name,
        "labels": labels,
        "environment": dict(cfg.env),
        "detach": True,
    }
    if command is not None:
        create_kwargs["command"] = command
    if entrypoint:
        create_kwargs["entrypoint"] = list(entrypoint)
    if exposed:
        create_kwargs["ports"] = exposed
    if conf.get("work_dir"):
        create_kwargs["working_dir"] = str(conf["work_dir"])
    if cfg.user:
        create_kwargs["user"] = cfg.user
    return ContainerOptions(name=name, host=host_kwargs, create=create_kwargs)


def _port_bindings(
    cfg: TaskConfig, labels: list[str], network_mode: str
) -> tuple[list[tuple[int, str]], dict[str, tuple[str, int]]]:
    by_label = {p.label: p for p in cfg.ports}
    exposed: list[tuple[int, str]] = []
    bindings: dict[str, tuple[str, int]] = {}
    for label in labels:
        pm = by_label.get(label)
        if pm is None:
            known = ", ".join(sorted(by_label)) or "none"
            raise DriverError(
                f"port {label!r} in the docker config is not in the group's network "
                f"block (ports: {known})"
            )
        if network_mode in ("host", "none"):
            continue  # nothing to publish: the task binds the host port itself
        container_port = pm.to if pm.to > 0 else pm.host_port
        host_ip = pm.host_ip or "0.0.0.0"
        for proto in ("tcp", "udp"):
            exposed.append((container_port, proto))
            bindings[f"{container_port}/{proto}"] = (host_ip, pm.host_port)
    return exposed, bindings


def _binds(cfg: TaskConfig, mount_task_dirs: bool) -> list[str]:
    if not mount_task_dirs:
        return []
    pairs = [(cfg.alloc_dir, "/alloc")]
    if cfg.task_dir:
        pairs += [
            (os.path.join(cfg.task_dir, "local"), "/local"),
            (os.path.join(cfg.task_dir, "secrets"), "/secrets"),
        ]
    return [f"{host}:{inside}:rw" for host, inside in pairs if host and os.path.isdir(host)]
