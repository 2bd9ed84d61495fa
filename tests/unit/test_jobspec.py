"""corral.jobspec: HCL and JSON job files -> pb.Job, errors placed at file:line:col."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from corral import jobspec, structs
from corral.api.jsonmap import from_json, struct_to_python
from corral.jobspec import support
from corral.proto import pb

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECOND = structs.SECOND


REAL_GATE = support.NOT_YET_SUPPORTED
# These tests exercise the gate's mechanism with the set it had when they were
# written; as features land the real set shrinks (checked on REAL_GATE).
TEST_GATE = frozenset(
    {
        "constraint",
        "affinity",
        "spread",
        "update",
        "migrate",
        "reschedule",
        "service",
        "check",
        "check_restart",
        "template",
        "artifact",
        "volume",
        "volume_mount",
        "vault",
        "consul",
        "lifecycle",
        "scaling",
        "periodic",
        "parameterized",
        "multiregion",
        "csi_plugin",
        "dispatch_payload",
        "logs",
        "identity",
        "ephemeral_disk",
        "dynamic",
        "sidecar_service",
        "connect",
    }
)


@pytest.fixture(autouse=True)
def _fixed_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "NOT_YET_SUPPORTED", TEST_GATE)


def problems_of(text: str, filename: str = "job.hcl") -> list[str]:
    """The problems ``parse`` reports ([] when the job is fine)."""
    try:
        jobspec.parse(text, filename)
    except jobspec.JobspecError as e:
        return e.problems
    return []


def hcl_job(group_body: str = "", task_body: str = "", job_body: str = "") -> str:
    """A valid mock-driver job with extra lines at the job, group and task level."""
    return f"""
job "demo" {{
  {job_body}
  group "web" {{
    {group_body}
    task "server" {{
      driver = "mock"
      {task_body}
    }}
  }}
}}
"""


# ---------------------------------------------------------------- examples


def test_hello_hcl_example() -> None:
    job = jobspec.parse_file(EXAMPLES / "hello.hcl")
    assert job.id == "hello" and job.name == "hello" and job.type == "service"
    (group,) = job.task_groups
    assert group.name == "web" and group.count == 2
    (net,) = group.networks
    assert [(p.label, p.value, p.to) for p in net.dynamic_ports] == [("http", 0, 8080)]
    assert not net.reserved_ports
    (task,) = group.tasks
    assert task.name == "server" and task.driver == "docker"
    config = struct_to_python(task.config)
    assert config["image"] == "corral-busybox:latest"
    assert config["ports"] == ["http"]
    assert config["command"] == "/bin/sh"
    assert config["args"][0] == "-c"
    # quotes unescaped, ${...} kept for the client to interpolate at run time
    assert 'echo "hello from ${NOMAD_ALLOC_NAME} (${NOMAD_ALLOC_ID})" >' in config["args"][1]
    assert "httpd -f -p 8080 -h /www" in config["args"][1]
    assert task.resources.cpu == 100 and task.resources.memory_mb == 64
    # canonicalized: ready to register
    assert job.namespace == "default" and job.priority == 50 and list(job.datacenters) == ["*"]
    assert task.kill_signal == "SIGTERM" and task.kill_timeout == 5 * SECOND
    assert group.restart_policy.mode == "fail"


def test_hello_json_example_is_the_hcl_job() -> None:
    assert jobspec.parse_file(EXAMPLES / "hello.json") == jobspec.parse_file(EXAMPLES / "hello.hcl")


def test_hello_exec_example_serves_its_alloc_id(tmp_path: Path) -> None:
    job = jobspec.parse_file(EXAMPLES / "hello-exec.hcl")
    (group,) = job.task_groups
    (port,) = group.networks[0].dynamic_ports
    assert port.label == "http" and port.to == 0
    (task,) = group.tasks
    assert task.driver == "raw_exec"
    config = struct_to_python(task.config)
    assert config["command"] == "python3"
    assert config["args"][0] == "-c"
    assert "${NOMAD_IP_http}" in config["args"] and "${NOMAD_PORT_http}" in config["args"]

    # Run it as the client would after interpolation, and ask for the page.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    values = {"${NOMAD_IP_http}": "127.0.0.1", "${NOMAD_PORT_http}": str(free_port)}
    args = [values.get(a, a) for a in config["args"]]
    env = dict(os.environ, NOMAD_ALLOC_NAME="hello-exec.web[0]", NOMAD_ALLOC_ID="alloc-1234")
    proc = subprocess.Popen(
        [sys.executable, *args], env=env, stderr=subprocess.DEVNULL, cwd=tmp_path
    )
    try:
        body = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/", timeout=2) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.05)
        assert b"alloc-1234" in body and b"hello-exec.web[0]" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- HCL mapping


def test_full_mapping_of_a_rich_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the gate emptied, every block the proto models must be mapped.
    monkeypatch.setattr(support, "NOT_YET_SUPPORTED", frozenset())
    text = """
job "shop" {
  name        = "Shop"
  datacenters = ["dc1", "dc2"]
  type        = "service"
  priority    = 70
  region      = "eu"
  namespace   = "prod"
  meta {
    owner = "team-a"
    build = 42
  }
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  constraint {
    distinct_hosts = true
  }
  affinity {
    attribute = "${node.datacenter}"
    value     = "dc1"
    weight    = 80
  }
  spread {
    attribute = "${node.datacenter}"
    target "dc1" {
      percent = 60
    }
    target "dc2" {
      percent = 40
    }
  }
  update {
    max_parallel     = 2
    min_healthy_time = "5s"
    healthy_deadline = "2m"
    canary           = 1
    auto_revert      = true
  }
  group "api" {
    count          = 3
    shutdown_delay = "2s"
    meta = { tier = "back" }
    network {
      mode = "host"
      port "http" {
        to = 8080
      }
      port "admin" {
        static = 9000
        to     = 9001
      }
    }
    constraint {
      operator  = "distinct_property"
      attribute = "${meta.rack}"
    }
    constraint {
      attribute = "${attr.os.version}"
      version   = ">= 20.04"
    }
    restart {
      attempts = 5
      delay    = "10s"
    }
    reschedule {
      delay          = "1m"
      delay_function = "constant"
    }
    migrate {
      max_parallel = 2
    }
    service {
      name        = "api"
      port        = "http"
      tags        = ["traefik.enable=true", "v1"]
      canary_tags = ["traefik.nomad.canary=true"]
      provider    = "nomad"
      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }
    task "app" {
      driver         = "docker"
      user           = "nobody"
      leader         = true
      kill_timeout   = "20s"
      kill_signal    = "SIGTERM"
      shutdown_delay = "1s"
      config {
        image = "shop:1"
        ports = ["http", "admin"]
      }
      env {
        PORT = "${NOMAD_PORT_http}"
        WORKERS = 4
      }
      resources {
        cpu        = 500
        memory     = 256
        memory_max = 512
      }
      restart {
        attempts = 1
      }
      service {
        name = "app-admin"
        port = "admin"
      }
    }
  }
}
"""
    job = jobspec.parse(text, "shop.hcl")
    assert (job.id, job.name, job.type, job.priority, job.region, job.namespace) == (
        "shop",
        "Shop",
        "service",
        70,
        "eu",
        "prod",
    )
    assert list(job.datacenters) == ["dc1", "dc2"]
    assert dict(job.meta) == {"owner": "team-a", "build": "42"}
    assert [(c.l_target, c.operand, c.r_target) for c in job.constraints] == [
        ("${attr.kernel.name}", "=", "linux"),
        ("", "distinct_hosts", ""),
    ]
    (aff,) = job.affinities
    assert (aff.l_target, aff.operand, aff.r_target, aff.weight) == (
        "${node.datacenter}",
        "=",
        "dc1",
        80,
    )
    (spread,) = job.spreads
    assert spread.weight == 50
    assert [(t.value, t.percent) for t in spread.spread_target] == [("dc1", 60), ("dc2", 40)]
    assert job.update.max_parallel == 2 and job.update.canary == 1 and job.update.auto_revert
    assert job.update.min_healthy_time == 5 * SECOND

    (group,) = job.task_groups
    assert group.count == 3 and group.shutdown_delay == 2 * SECOND
    assert dict(group.meta) == {"tier": "back"}
    (net,) = group.networks
    assert net.mode == "host"
    assert [(p.label, p.to) for p in net.dynamic_ports] == [("http", 8080)]
    assert [(p.label, p.value, p.to) for p in net.reserved_ports] == [("admin", 9000, 9001)]
    assert [(c.l_target, c.operand, c.r_target) for c in group.constraints] == [
        ("${meta.rack}", "distinct_property", ""),
        ("${attr.os.version}", "version", ">= 20.04"),
    ]
    # partial policies merge over the job type's defaults, as Nomad does
    assert group.restart_policy == pb.RestartPolicy(
        attempts=5, interval=30 * 60 * SECOND, delay=10 * SECOND, mode="fail"
    )
    assert group.reschedule_policy.delay == 60 * SECOND
    assert group.reschedule_policy.delay_function == "constant"
    assert group.reschedule_policy.unlimited
    assert group.migrate.max_parallel == 2 and group.migrate.health_check == "checks"
    # the job-level update reaches the group through canonicalize
    assert group.update.max_parallel == 2 and group.update.progress_deadline == 600 * SECOND
    (svc,) = group.services
    assert (svc.name, svc.port_label, svc.provider) == ("api", "http", "nomad")
    assert list(svc.tags) == ["traefik.enable=true", "v1"]
    assert list(svc.canary_tags) == ["traefik.nomad.canary=true"]
    (chk,) = svc.checks
    assert (chk.name, chk.type, chk.path, chk.interval, chk.timeout) == (
        "alive",
        "http",
        "/health",
        10 * SECOND,
        2 * SECOND,
    )
    assert chk.check_restart.limit == 3 and chk.check_restart.grace == 30 * SECOND

    (task,) = group.tasks
    assert (task.user, task.leader, task.kill_signal) == ("nobody", True, "SIGTERM")
    assert task.kill_timeout == 20 * SECOND and task.shutdown_delay == SECOND
    assert dict(task.env) == {"PORT": "${NOMAD_PORT_http}", "WORKERS": "4"}
    assert (task.resources.cpu, task.resources.memory_mb, task.resources.memory_max_mb) == (
        500,
        256,
        512,
    )
    # a task's restart block merges over its group's
    assert task.restart_policy == pb.RestartPolicy(
        attempts=1, interval=30 * 60 * SECOND, delay=10 * SECOND, mode="fail"
    )
    assert [(s.name, s.port_label) for s in task.services] == [("app-admin", "admin")]


def test_config_is_free_form_and_round_trips_to_a_plain_dict() -> None:
    text = hcl_job(
        group_body='network {\n port "http" {}\n }',
        task_body="""
      config {
        image = "x"
        ports = ["http"]
        args  = ["-p", "${NOMAD_PORT_http}", "$${LITERAL}", "tab\\tend"]
        count = 3
        ratio = 0.5
        debug = true
        unset = null
        labels = { "com.example/team" = "a", n = 1 }
        mount {
          type   = "bind"
          source = "/srv"
        }
        mount {
          type = "tmpfs"
        }
        script = <<-EOT
          echo ${NOMAD_ALLOC_ID}
            indented
          EOT
      }
""",
    )
    job = jobspec.parse(text)
    config = struct_to_python(job.task_groups[0].tasks[0].config)
    assert config == {
        "image": "x",
        "ports": ["http"],
        "args": ["-p", "${NOMAD_PORT_http}", "${LITERAL}", "tab\tend"],
        "count": 3,
        "ratio": 0.5,
        "debug": True,
        "labels": {"com.example/team": "a", "n": 1},
        "mount": [{"type": "bind", "source": "/srv"}, {"type": "tmpfs"}],
        "script": "echo ${NOMAD_ALLOC_ID}\n  indented\n",
    }


def test_heredoc_keeps_its_text_and_final_newline() -> None:
    text = hcl_job(task_body='config {\n  text = <<EOT\n  a "q" \\n\nb\nEOT\n}')
    job = jobspec.parse(text)
    assert struct_to_python(job.task_groups[0].tasks[0].config)["text"] == '  a "q" \\n\nb\n'


def test_count_defaults_to_one_and_labels_are_unquoted() -> None:
    job = jobspec.parse(hcl_job())
    assert job.id == "demo" and job.task_groups[0].name == "web"
    assert job.task_groups[0].tasks[0].name == "server"
    assert job.task_groups[0].count == 1


def test_count_zero_is_kept() -> None:
    assert jobspec.parse(hcl_job(group_body="count = 0")).task_groups[0].count == 0


def test_numbers_given_as_strings_are_accepted() -> None:
    job = jobspec.parse(hcl_job(group_body='count = "3"'))
    assert job.task_groups[0].count == 3


def test_expressions_are_reported_not_evaluated() -> None:
    problems = problems_of(hcl_job(group_body="count = var.count"))
    assert len(problems) == 1
    assert problems[0].startswith('group "web": count: cannot evaluate var.count')


def test_wrong_value_types_are_reported() -> None:
    problems = problems_of(hcl_job(group_body='count = "many"', task_body="leader = 3"))
    assert 'group "web": count: expected a whole number, got "many"' in problems
    assert 'group "web": task "server": leader: expected true or false, got 3' in problems


def test_attribute_set_twice_is_reported() -> None:
    problems = problems_of(hcl_job(task_body='user = "a"\n      user = "b"'))
    assert problems == ['group "web": task "server": attribute "user" is set more than once']


def test_no_job_block() -> None:
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse('group "web" {}\n', "x.hcl")
    assert any("no job block" in p for p in info.value.problems)
    assert 'unknown block "group" at the top level of the file' in info.value.problems


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "col", "words"),
    [
        ('job "x" {\n  group "web" {\n    count = 1\n', 4, 1, "unexpected end of file"),
        ('job "x" {\n  type = @\n}\n', 2, 10, "unexpected character '@'"),
        ('job "x" {\n  type = "service\n}\n', 2, 11, "unterminated string"),
        ('job "x" {\n  datacenters = ["a", "b"\n}\n', 3, 1, "unexpected '}'"),
        ('job "x" {\n  type =\n}\n', 2, 9, "unexpected newline; expected a value"),
    ],
)
def test_syntax_error_names_file_line_and_column(
    text: str, line: int, col: int, words: str
) -> None:
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse(text, "web.hcl")
    err = info.value
    assert (err.filename, err.line, err.col) == ("web.hcl", line, col)
    assert str(err).startswith(f"web.hcl:{line}:{col}: syntax error: ")
    assert words in str(err)
    assert len(err.problems) == 1


def test_json_syntax_error_names_line_and_column() -> None:
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse('{"Job": {\n  "ID": "x",\n  "TaskGroups": [}\n}', "job.json")
    assert (info.value.line, info.value.col) == (3, 18)
    assert str(info.value).startswith("job.json:3:18: invalid JSON: ")


def test_validation_problems_are_placed_at_their_block() -> None:
    text = """job "demo" {
  group "web" {
    task "server" {
      driver = "docker"
      config {
        ports = ["http"]
      }
    }
  }
}
"""
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse(text, "demo.hcl")
    lines = str(info.value).splitlines()
    assert (
        'demo.hcl:5:7: group "web": task "server": missing config.image for the docker driver'
        in lines
    )
    assert (
        'demo.hcl:5:7: group "web": task "server": config.ports: port "http" is not defined'
        " in the group's network" in lines
    )
    assert (info.value.line, info.value.col) == (5, 7)


def test_problems_without_a_position_are_prefixed_with_the_file() -> None:
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse('{"Job": {"TaskGroups": []}}', "job.json")
    assert str(info.value).splitlines() == [
        "job.json: missing job ID",
        "job.json: no task groups: a job needs at least one group",
    ]
    assert (info.value.line, info.value.col) == (0, 0)


def test_parse_file_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse_file(tmp_path / "nope.hcl")
    assert "cannot read the job file" in str(info.value)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("1ns", 1),
        ("5us", 5_000),
        ("5µs", 5_000),
        ("250ms", 250_000_000),
        ("30s", 30 * SECOND),
        ("1m30s", 90 * SECOND),
        ("1.5h", 5400 * SECOND),
        ("2h45m", (2 * 3600 + 45 * 60) * SECOND),
        (".5s", SECOND // 2),
        ("-1s", -SECOND),
        ("1h0m0.5s", 3600 * SECOND + SECOND // 2),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert jobspec.parse_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("5", "missing unit"),
        ("5x", 'unknown unit "x"'),
        ("s", "expected a number"),
        ("1 s", 'unknown unit " s"'),
        ("9999999h", "too long"),
    ],
)
def test_parse_duration_rejects_bad_input(text: str, words: str) -> None:
    with pytest.raises(jobspec.DurationError) as info:
        jobspec.parse_duration(text)
    message = str(info.value)
    assert message.startswith(f'invalid duration "{text}": ') and words in message
    assert "30s" in message or "too long" in message  # says what to write instead


def test_format_duration() -> None:
    assert [jobspec.format_duration(n) for n in (0, 90 * SECOND, 250_000_000, -SECOND)] == [
        "0s",
        "1m30s",
        "250ms",
        "-1s",
    ]


def test_bad_duration_in_hcl_is_one_problem() -> None:
    problems = problems_of(hcl_job(task_body='kill_timeout = "5 seconds"'))
    assert len(problems) == 1
    assert problems[0].startswith('group "web": task "server": kill_timeout: invalid duration')


def test_duration_without_unit_in_hcl() -> None:
    problems = problems_of(hcl_job(task_body="kill_timeout = 30"))
    assert problems == [
        'group "web": task "server": kill_timeout: a duration is a string with a unit,'
        ' like "30s", got 30'
    ]


# ---------------------------------------------------------------- JSON


def test_bare_json_job_object() -> None:
    data = json.loads((EXAMPLES / "hello.json").read_text())["Job"]
    assert jobspec.parse(json.dumps(data)) == jobspec.parse_file(EXAMPLES / "hello.hcl")


def test_json_with_nomad_nulls_and_defaults_parses() -> None:
    # The shape of `nomad job inspect` output: nulls everywhere, server-filled values.
    data: dict[str, Any] = {
        "Job": {
            "ID": "chrony",
            "Name": "chrony",
            "Type": "service",
            "Priority": 50,
            "Datacenters": ["dc1"],
            "NodePool": "default",
            "Constraints": None,
            "Affinities": None,
            "Spreads": None,
            "Periodic": None,
            "ParameterizedJob": None,
            "Reschedule": None,
            "Migrate": None,
            "Meta": None,
            "Update": {"Stagger": 0, "MaxParallel": 0, "HealthCheck": "", "Canary": 0},
            "ConsulToken": "",
            "Dispatched": False,
            "Payload": None,
            "Status": "running",
            "Version": 3,
            "TaskGroups": [
                {
                    "Name": "chrony",
                    "Count": 1,
                    "Consul": {"Namespace": ""},
                    "EphemeralDisk": {"Migrate": False, "SizeMB": 300, "Sticky": False},
                    "Migrate": {
                        "HealthCheck": "checks",
                        "HealthyDeadline": 300000000000,
                        "MaxParallel": 1,
                        "MinHealthyTime": 10000000000,
                    },
                    "ReschedulePolicy": {
                        "Attempts": 0,
                        "Delay": 30000000000,
                        "DelayFunction": "exponential",
                        "Interval": 0,
                        "MaxDelay": 3600000000000,
                        "Unlimited": True,
                    },
                    "RestartPolicy": {
                        "Attempts": 2,
                        "Delay": 15000000000,
                        "Interval": 1800000000000,
                        "Mode": "fail",
                    },
                    "Networks": None,
                    "Services": None,
                    "Update": None,
                    "Volumes": None,
                    "Tasks": [
                        {
                            "Name": "chrony",
                            "Driver": "docker",
                            "Config": {"image": "chrony:latest", "cap_add": ["SYS_TIME"]},
                            "Constraints": None,
                            "Artifacts": None,
                            "Templates": None,
                            "Vault": None,
                            "Lifecycle": None,
                            "LogConfig": {"MaxFileSizeMB": 10, "MaxFiles": 10, "Disabled": False},
                            "Resources": {
                                "CPU": 100,
                                "MemoryMB": 300,
                                "Networks": None,
                                "DiskMB": 0,
                            },
                            "KillTimeout": 5000000000,
                            "Env": None,
                        }
                    ],
                }
            ],
        }
    }
    job = jobspec.parse(json.dumps(data), "chrony.json")
    assert job.id == "chrony" and job.task_groups[0].tasks[0].resources.memory_mb == 300


def test_json_count_defaults_to_one_and_partial_policies_merge() -> None:
    data = {
        "ID": "x",
        "TaskGroups": [
            {
                "Name": "g",
                "RestartPolicy": {"Attempts": 0},
                "Tasks": [{"Name": "t", "Driver": "mock", "RestartPolicy": {"Delay": 5 * SECOND}}],
            }
        ],
    }
    job = jobspec.parse(json.dumps(data))
    group = job.task_groups[0]
    assert group.count == 1
    assert group.restart_policy == pb.RestartPolicy(
        attempts=0, interval=30 * 60 * SECOND, delay=15 * SECOND, mode="fail"
    )
    assert group.tasks[0].restart_policy.delay == 5 * SECOND
    assert group.tasks[0].restart_policy.attempts == 0


def test_json_unknown_and_unsupported_fields() -> None:
    data = {
        "Job": {
            "ID": "x",
            "Periodic": {"Enabled": True, "Spec": "@daily"},
            "Bogus": 1,
            "TaskGroups": [
                {
                    "Name": "g",
                    "Tasks": [
                        {
                            "Name": "t",
                            "Driver": "mock",
                            "Templates": [{"EmbeddedTmpl": "x", "DestPath": "local/x"}],
                            "Odd": {"a": 1},
                        }
                    ],
                }
            ],
        }
    }
    problems = problems_of(json.dumps(data), "x.json")
    assert problems == [
        'block "periodic" is not supported yet (job "x")',
        'unknown field "Bogus" in job "x"',
        'block "template" is not supported yet (group "g", task "t")',
        'unknown field "Odd" in group "g", task "t"',
    ]


def test_json_wrong_type_is_one_clear_problem() -> None:
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse('{"Job": {"ID": "x", "TaskGroups": [{"Count": "lots"}]}}', "x.json")
    assert info.value.problems == ["TaskGroups[0].Count: expected an integer, got 'lots'"]


def test_decode_json_for_the_server() -> None:
    data = json.loads((EXAMPLES / "hello.json").read_text())
    job, problems = jobspec.decode_json(data)
    assert problems == []
    structs.canonicalize(job)
    assert jobspec.validate(job) == []


# ---------------------------------------------------------------- the gate


def test_not_yet_supported_is_one_frozenset() -> None:
    """The real gate: a frozenset that no longer names what corral runs."""
    real = REAL_GATE
    assert isinstance(real, frozenset)
    implemented = {
        "constraint",
        "affinity",
        "spread",
        "migrate",
        "reschedule",
        "service",
        "check",
        "update",
    }
    assert not (real & implemented)
    assert {"template", "vault", "volume"} <= real


_LOCATIONS = {"job": 'job "demo"', "group": 'group "web"', "task": 'group "web", task "server"'}


@pytest.mark.parametrize(
    ("level", "snippet"),
    [
        ("job", "update {\n max_parallel = 1\n}"),
        ("job", 'periodic {\n crons = ["@daily"]\n}'),
        ("job", "multiregion {}"),
        ("job", "parameterized {}"),
        ("job", 'constraint {\n attribute = "${attr.os}"\n value = "linux"\n}'),
        ("group", "update {\n canary = 1\n}"),
        ("group", "migrate {}"),
        ("group", 'reschedule {\n delay = "5s"\n}'),
        ("group", "ephemeral_disk {\n size = 500\n}"),
        ("group", 'volume "data" {\n type = "host"\n}'),
        ("group", "scaling {\n max = 3\n}"),
        ("group", "consul {}"),
        ("group", 'spread {\n attribute = "${node.datacenter}"\n}'),
        ("group", 'service {\n name = "web"\n}'),
        ("task", 'template {\n data = "x"\n destination = "local/x"\n}'),
        ("task", 'artifact {\n source = "http://x"\n}'),
        ("task", "logs {\n max_files = 3\n}"),
        ("task", 'lifecycle {\n hook = "prestart"\n}'),
        ("task", 'vault {\n policies = ["x"]\n}'),
        ("task", 'volume_mount {\n volume = "data"\n}'),
        ("task", "identity {}"),
        ("task", "csi_plugin {}"),
        ("task", "dispatch_payload {}"),
        ("task", 'dynamic "env" {\n for_each = []\n}'),
        ("task", 'affinity {\n attribute = "${node.class}"\n value = "big"\n}'),
    ],
)
def test_not_yet_supported_blocks_are_reported(level: str, snippet: str) -> None:
    name = snippet.split()[0]
    problems = problems_of(hcl_job(**{f"{level}_body": snippet}))
    assert problems == [f'block "{name}" is not supported yet ({_LOCATIONS[level]})']


def test_gate_inside_a_service(monkeypatch: pytest.MonkeyPatch) -> None:
    text = hcl_job(
        group_body="""
    network {
      port "http" {}
    }
    service {
      name = "web"
      port = "http"
      connect {
        sidecar_service {}
      }
      check {
        type     = "tcp"
        interval = "5s"
        timeout  = "1s"
        check_restart {
          limit = 2
        }
      }
    }
"""
    )
    assert problems_of(text) == [
        'block "service" is not supported yet (group "web")',
        'block "connect" is not supported yet (group "web", service "web")',
        'block "check" is not supported yet (group "web", service "web")',
        'block "check_restart" is not supported yet (group "web", service "web", check #1)',
    ]
    # Enabling a block is removing its name from the set: the rest stays gated.
    monkeypatch.setattr(support, "NOT_YET_SUPPORTED", support.NOT_YET_SUPPORTED - {"service"})
    assert 'block "service" is not supported yet (group "web")' not in problems_of(text)
    assert 'block "check" is not supported yet (group "web", service "web")' in problems_of(text)


def test_enabling_update_maps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    text = hcl_job(group_body='update {\n max_parallel = 3\n min_healthy_time = "1s"\n}')
    assert problems_of(text) == ['block "update" is not supported yet (group "web")']
    monkeypatch.setattr(support, "NOT_YET_SUPPORTED", support.NOT_YET_SUPPORTED - {"update"})
    group = jobspec.parse(text).task_groups[0]
    assert group.update.max_parallel == 3 and group.update.min_healthy_time == SECOND
    assert group.update.healthy_deadline == 300 * SECOND  # merged with Nomad's defaults


def test_gate_applies_to_proto_jobs() -> None:
    job = jobspec.parse(hcl_job())
    job.constraints.add(l_target="${attr.os}", operand="=", r_target="linux")
    job.task_groups[0].update.max_parallel = 2
    job.task_groups[0].tasks[0].services.add(name="web")
    assert jobspec.validate(job) == [
        'block "constraint" is not supported yet (job "demo")',
        'block "update" is not supported yet (group "web")',
        'block "service" is not supported yet (group "web", task "server")',
    ]


def test_gate_ignores_what_canonicalize_fills_in() -> None:
    job = pb.Job()
    from_json(json.loads((EXAMPLES / "hello.json").read_text())["Job"], job, unknown=[])
    job.update.SetInParent()  # Nomad's all-zero job update
    job.update.max_parallel = 0
    structs.canonicalize(job)
    assert job.task_groups[0].HasField("migrate") and job.task_groups[0].HasField("update")
    assert jobspec.validate(job) == []


def test_unknown_blocks_and_attributes_are_named() -> None:
    text = hcl_job(job_body="colour = 1", task_body="foo {}")
    assert problems_of(text) == [
        'unknown attribute "colour" in job "demo"',
        'unknown block "foo" in group "web", task "server"',
    ]
