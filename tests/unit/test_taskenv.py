"""The task environment: Nomad's NOMAD_* variables and ${...} interpolation."""

from __future__ import annotations

from typing import Any

from corral.client import taskenv
from corral.proto import pb

ALLOC_ID = "8d5a4c2e-1111-2222-3333-444455556666"


def make(
    driver: str = "docker",
    ports: list[tuple[str, int, int, str]] | None = None,
) -> tuple[pb.Allocation, pb.Task, pb.Node]:
    task = pb.Task(name="server", driver=driver)
    task.resources.cpu = 250
    task.resources.memory_mb = 128
    task.env["GREETING"] = "hello from ${node.unique.name}"
    task.env["LISTEN"] = "0.0.0.0:${NOMAD_PORT_http}"
    task.env["NOMAD_REGION"] = "overridden"
    task.env["KEEP"] = "${UNKNOWN_THING}"
    task.meta["owner"] = "team-${node.datacenter}"
    group = pb.TaskGroup(name="web", count=3)
    group.tasks.append(task)
    group.meta["tier"] = "front"
    group.meta["owner"] = "group-loses"
    job = pb.Job(id="shop", name="shop", namespace="prod", region="eu")
    job.task_groups.append(group)
    job.meta["version"] = "42"
    alloc = pb.Allocation(
        id=ALLOC_ID,
        name="shop.web[2]",
        namespace="prod",
        job_id="shop",
        task_group="web",
        node_id="node-1",
    )
    alloc.job.CopyFrom(job)
    for label, value, to, ip in ports or [("http", 23456, 8080, "10.0.0.5")]:
        alloc.allocated_resources.shared.ports.append(
            pb.AllocatedPortMapping(label=label, value=value, to=to, host_ip=ip)
        )
    alloc.allocated_resources.tasks["server"].cpu.cpu_shares = 500
    alloc.allocated_resources.tasks["server"].memory.memory_mb = 256
    node = pb.Node(id="node-1", name="worker-a", datacenter="dc1", node_class="big")
    node.attributes["kernel.name"] = "linux"
    node.attributes["unique.network.ip-address"] = "10.0.0.5"
    node.meta["rack"] = "r7"
    return alloc, task, node


def test_identity_and_resources() -> None:
    alloc, task, node = make()
    env = taskenv.build_env(alloc, task, node, "/a/alloc", "/a/server")
    assert env["NOMAD_ALLOC_ID"] == ALLOC_ID
    assert env["NOMAD_SHORT_ALLOC_ID"] == ALLOC_ID[:8]
    assert env["NOMAD_ALLOC_NAME"] == "shop.web[2]"
    assert env["NOMAD_ALLOC_INDEX"] == "2"
    assert env["NOMAD_JOB_ID"] == "shop"
    assert env["NOMAD_JOB_NAME"] == "shop"
    assert env["NOMAD_GROUP_NAME"] == "web"
    assert env["NOMAD_TASK_NAME"] == "server"
    assert env["NOMAD_DC"] == "dc1"
    assert env["NOMAD_NAMESPACE"] == "prod"
    # the allocated resources win over the task's ask
    assert env["NOMAD_CPU_LIMIT"] == "500"
    assert env["NOMAD_MEMORY_LIMIT"] == "256"
    assert "NOMAD_MEMORY_MAX_LIMIT" not in env


def test_task_env_overrides_and_is_interpolated() -> None:
    alloc, task, node = make()
    env = taskenv.build_env(alloc, task, node, "/a/alloc", "/a/server")
    assert env["NOMAD_REGION"] == "overridden"  # the task's env block comes last
    assert env["GREETING"] == "hello from worker-a"
    assert env["LISTEN"] == "0.0.0.0:8080"
    assert env["KEEP"] == "${UNKNOWN_THING}"


def test_region_defaults() -> None:
    alloc, task, node = make()
    del task.env["NOMAD_REGION"]
    assert taskenv.build_env(alloc, task, node)["NOMAD_REGION"] == "eu"
    alloc.job.region = ""
    assert taskenv.build_env(alloc, task, node)["NOMAD_REGION"] == "global"
    assert taskenv.build_env(alloc, task, node, region="us")["NOMAD_REGION"] == "us"


def test_docker_ports_bind_to_the_container_port() -> None:
    alloc, task, node = make("docker")
    env = taskenv.build_env(alloc, task, node, "/a/alloc", "/a/server")
    assert env["NOMAD_PORT_http"] == "8080"
    assert env["NOMAD_ALLOC_PORT_http"] == "8080"
    assert env["NOMAD_HOST_PORT_http"] == "23456"
    assert env["NOMAD_IP_http"] == "10.0.0.5"
    assert env["NOMAD_HOST_IP_http"] == "10.0.0.5"
    assert env["NOMAD_ADDR_http"] == "10.0.0.5:23456"
    assert env["NOMAD_HOST_ADDR_http"] == "10.0.0.5:23456"


def test_raw_exec_binds_the_host_port() -> None:
    alloc, task, node = make("raw_exec")
    env = taskenv.build_env(alloc, task, node, "/a/alloc", "/a/server")
    assert env["NOMAD_PORT_http"] == "23456"
    assert env["NOMAD_HOST_PORT_http"] == "23456"
    assert env["NOMAD_ADDR_http"] == "10.0.0.5:23456"


def test_port_without_to_and_without_ip() -> None:
    alloc, task, node = make("docker", ports=[("admin", 24000, 0, "")])
    env = taskenv.build_env(alloc, task, node)
    assert env["NOMAD_PORT_admin"] == "24000"
    # no host_ip on the mapping: the node's address
    assert env["NOMAD_ADDR_admin"] == "10.0.0.5:24000"


def test_port_labels_are_cleaned_and_ipv6_is_bracketed() -> None:
    alloc, task, node = make("docker", ports=[("my-port", 25000, 0, "::1")])
    env = taskenv.build_env(alloc, task, node)
    assert env["NOMAD_PORT_my_port"] == "25000"
    assert env["NOMAD_ADDR_my_port"] == "[::1]:25000"
    assert "NOMAD_PORT_my-port" not in env


def test_dirs_for_host_and_container_drivers() -> None:
    alloc, task, node = make("raw_exec")
    env = taskenv.build_env(alloc, task, node, "/data/a1/alloc", "/data/a1/server")
    assert env["NOMAD_ALLOC_DIR"] == "/data/a1/alloc"
    assert env["NOMAD_TASK_DIR"] == "/data/a1/server/local"
    assert env["NOMAD_SECRETS_DIR"] == "/data/a1/server/secrets"
    env = taskenv.build_env(alloc, task, node, "/data/a1/alloc", "/data/a1/server", driver="docker")
    assert env["NOMAD_ALLOC_DIR"] == "/alloc"
    assert env["NOMAD_TASK_DIR"] == "/local"
    assert env["NOMAD_SECRETS_DIR"] == "/secrets"


def test_task_dirs_layout() -> None:
    dirs = taskenv.task_dirs("/data/allocs/abc/", "web")
    assert dirs.alloc_dir == "/data/allocs/abc/alloc"
    assert dirs.task_dir == "/data/allocs/abc/web"
    assert dirs.local_dir == "/data/allocs/abc/web/local"
    assert dirs.secrets_dir == "/data/allocs/abc/web/secrets"
    assert dirs.logs_dir == "/data/allocs/abc/alloc/logs"


def test_meta_merges_job_group_task() -> None:
    alloc, task, node = make()
    env = taskenv.build_env(alloc, task, node)
    assert env["NOMAD_META_version"] == "42"
    assert env["NOMAD_META_VERSION"] == "42"
    assert env["NOMAD_META_tier"] == "front"
    assert env["NOMAD_META_owner"] == "team-dc1"  # task wins, and is interpolated
    assert env["NOMAD_META_OWNER"] == "team-dc1"


def test_alloc_index_from_field_when_name_has_none() -> None:
    alloc, task, node = make()
    alloc.name = ""
    alloc.alloc_index = 4
    env = taskenv.build_env(alloc, task, node)
    assert env["NOMAD_ALLOC_INDEX"] == "4"
    assert env["NOMAD_ALLOC_NAME"] == "shop.web[4]"


def test_node_variables() -> None:
    _, _, node = make()
    nv = taskenv.node_variables(node, region="eu")
    assert nv["node.unique.id"] == "node-1"
    assert nv["node.unique.name"] == "worker-a"
    assert nv["node.datacenter"] == "dc1"
    assert nv["node.class"] == "big"
    assert nv["node.region"] == "eu"
    assert nv["attr.kernel.name"] == "linux"
    assert nv["meta.rack"] == "r7"


def test_interpolate_recurses_and_leaves_unknowns() -> None:
    env = {"NOMAD_PORT_http": "8080", "NOMAD_ALLOC_ID": "a1"}
    nv = {"node.unique.id": "n1", "attr.kernel.name": "linux", "meta.rack": "r7"}
    config: dict[str, Any] = {
        "image": "corral-busybox:latest",
        "command": "httpd",
        "args": ["-f", "-p", "${NOMAD_PORT_http}", "-h", "/www"],
        "labels": {"node": "${node.unique.id}", "rack": "${meta.rack}"},
        "nested": [{"k": "${attr.kernel.name}-${ NOMAD_ALLOC_ID }"}],
        "shell": "echo ${HOME} $${NOMAD_PORT_http}",
        "count": 3,
        "flag": True,
        "envref": ['${env["NOMAD_ALLOC_ID"]}', "${env.NOMAD_PORT_http}"],
    }
    out = taskenv.interpolate(config, env, nv)
    assert out["args"] == ["-f", "-p", "8080", "-h", "/www"]
    assert out["labels"] == {"node": "n1", "rack": "r7"}
    assert out["nested"] == [{"k": "linux-a1"}]
    assert out["shell"] == "echo ${HOME} $8080"
    assert out["count"] == 3 and out["flag"] is True
    assert out["envref"] == ["a1", "8080"]
    # the input is not modified
    assert config["args"][2] == "${NOMAD_PORT_http}"


def test_interpolate_is_single_pass() -> None:
    env = {"A": "${B}", "B": "b"}
    assert taskenv.interpolate("x${A}", env, {}) == "x${B}"


def test_env_prefers_env_over_node_vars() -> None:
    assert taskenv.interpolate("${X}", {"X": "env"}, {"X": "node"}) == "env"
