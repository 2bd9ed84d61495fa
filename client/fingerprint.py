"""Node fingerprint: resources and attributes, named as Nomad names them."""

from __future__ import annotations

import os
import platform
import socket

import corral
from corral.client.drivers.base import Driver
from corral.proto import pb


def cpu_mhz_per_core() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return int(float(line.split(":")[1]))
    except OSError:
        pass
    return 1000


def memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def fingerprint_node(
    node: pb.Node,
    drivers: dict[str, Driver],
    advertise_ip: str,
    cpu_total: int = 0,
    memory_total: int = 0,
) -> None:
    """Fill in the node's resources, attributes and drivers, in place."""
    cores = os.cpu_count() or 1
    mhz = cpu_mhz_per_core()
    total_cpu = cpu_total or cores * mhz
    total_mem = memory_total or memory_mb()
    node.node_resources.cpu.cpu_shares = total_cpu
    node.node_resources.cpu.total_cpu_cores = cores
    node.node_resources.memory.memory_mb = total_mem
    uname = platform.uname()
    attrs = {
        "kernel.name": uname.system.lower(),
        "kernel.version": uname.release,
        "os.name": uname.system.lower(),
        "cpu.arch": _arch(uname.machine),
        "cpu.numcores": str(cores),
        "cpu.frequency": str(mhz),
        "cpu.totalcompute": str(total_cpu),
        "memory.totalbytes": str(total_mem * 1024 * 1024),
        "unique.hostname": socket.gethostname(),
        "unique.network.ip-address": advertise_ip,
        "corral.version": corral.__version__,
        "nomad.version": "1.9.0",
    }
    node.attributes.update(attrs)
    for name, driver in drivers.items():
        fp = driver.fingerprint()
        info = node.drivers[name]
        info.detected = fp.detected
        info.healthy = fp.healthy
        info.health_description = fp.description
        info.attributes.update(fp.attributes)
        if fp.detected:
            node.attributes[f"driver.{name}"] = "1"
            for k, v in fp.attributes.items():
                node.attributes[k if k.startswith("driver.") else f"driver.{name}.{k}"] = v


def _arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
