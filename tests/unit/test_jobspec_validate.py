"""corral.jobspec.validate: every problem at once, each a sentence naming its field."""

from __future__ import annotations

import pytest

from corral import jobspec, structs
from corral.jobspec import support
from corral.proto import pb

SECOND = structs.SECOND


def minimal() -> pb.Job:
    """A valid job as the API might build it: not canonicalized, no HCL involved."""
    job = pb.Job(id="demo")
    group = job.task_groups.add(name="web", count=1)
    group.tasks.add(name="server", driver="mock")
    return job


def problems_of(text: str) -> list[str]:
    try:
        jobspec.parse(text, "job.hcl")
    except jobspec.JobspecError as e:
        return e.problems
    return []


def hcl(group_body: str = "", task_body: str = 'driver = "mock"', job_body: str = "") -> str:
    return f"""
job "demo" {{
  {job_body}
  group "web" {{
    {group_body}
    task "server" {{
      {task_body}
    }}
  }}
}}
"""


def test_a_minimal_proto_job_is_valid_before_and_after_canonicalize() -> None:
    job = minimal()
    assert jobspec.validate(job) == []
    structs.canonicalize(job)
    assert jobspec.validate(job) == []


def test_validate_does_not_change_the_job() -> None:
    job = minimal()
    job.task_groups[0].count = -1
    before = job.SerializeToString()
    jobspec.validate(job)
    assert job.SerializeToString() == before


# ---------------------------------------------------------------- job level


def test_missing_job_id() -> None:
    job = minimal()
    job.id = ""
    assert jobspec.validate(job) == ["missing job ID"]
    assert problems_of(hcl().replace('job "demo"', "job")) == ["missing job ID"]


def test_unknown_job_type() -> None:
    assert problems_of(hcl(job_body='type = "sysbatch"')) == [
        'unknown job type "sysbatch" (expected service, batch or system)'
    ]


@pytest.mark.parametrize("priority", [0, -5, 101, 1000])
def test_priority_out_of_range(priority: int) -> None:
    problems = problems_of(hcl(job_body=f"priority = {priority}"))
    assert len(problems) == 1
    assert "priority" in problems[0] and "between 1 and 100" in problems[0]


@pytest.mark.parametrize("priority", [1, 100])
def test_priority_bounds_are_valid(priority: int) -> None:
    assert problems_of(hcl(job_body=f"priority = {priority}")) == []


def test_no_task_groups() -> None:
    assert problems_of('job "demo" {\n  type = "batch"\n}\n') == [
        "no task groups: a job needs at least one group"
    ]


def test_total_count_over_the_limit() -> None:
    job = minimal()
    job.task_groups[0].count = structs.JOB_MAX_COUNT
    assert jobspec.validate(job) == []
    extra = job.task_groups.add(name="more", count=1)
    extra.tasks.add(name="t", driver="mock")
    assert jobspec.validate(job) == [
        f"total count of all groups is {structs.JOB_MAX_COUNT + 1}, over the limit of"
        f" {structs.JOB_MAX_COUNT}"
    ]


# ---------------------------------------------------------------- groups


def test_negative_count() -> None:
    assert problems_of(hcl(group_body="count = -1")) == [
        'group "web": count must not be negative, got -1'
    ]


def test_system_job_count() -> None:
    assert problems_of(hcl(job_body='type = "system"', group_body="count = 2")) == [
        'group "web": count cannot be more than 1 in a system job, got 2'
    ]


def test_duplicate_group_names() -> None:
    job = minimal()
    job.task_groups.add().CopyFrom(job.task_groups[0])
    assert jobspec.validate(job) == ['duplicate group name "web"']
    text = 'job "demo" {\n  group "web" {\n    task "a" {\n      driver = "mock"\n    }\n  }\n'
    text += '  group "web" {\n    task "b" {\n      driver = "nope"\n    }\n  }\n}\n'
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse(text, "job.hcl")
    # the second group is told apart, in words and in position
    assert str(info.value).splitlines() == [
        'job.hcl:7:3: duplicate group name "web"',
        'job.hcl:9:7: group "web" #2: task "b": unknown driver "nope" (known: docker, mock,'
        " raw_exec)",
    ]


def test_duplicate_task_names() -> None:
    job = minimal()
    job.task_groups[0].tasks.add(name="server", driver="mock")
    assert jobspec.validate(job) == ['group "web": duplicate task name "server"']


def test_group_without_tasks() -> None:
    assert problems_of('job "demo" {\n  group "web" {\n    count = 1\n  }\n}\n') == [
        'group "web": no tasks: a group needs at least one task'
    ]


def test_only_one_leader() -> None:
    job = minimal()
    job.task_groups[0].tasks[0].leader = True
    job.task_groups[0].tasks.add(name="side", driver="mock", leader=True)
    assert jobspec.validate(job) == ['group "web": only one task may be the leader, 2 are']


# ---------------------------------------------------------------- tasks


def test_task_without_driver() -> None:
    assert problems_of(hcl(task_body="")) == [
        'group "web": task "server": missing driver (docker, mock or raw_exec)'
    ]


def test_unknown_driver() -> None:
    assert problems_of(hcl(task_body='driver = "podman"')) == [
        'group "web": task "server": unknown driver "podman" (known: docker, mock, raw_exec)'
    ]


def test_docker_needs_an_image() -> None:
    problems = problems_of(hcl(task_body='driver = "docker"\n config {\n command = "x"\n }'))
    assert problems == ['group "web": task "server": missing config.image for the docker driver']
    assert problems_of(hcl(task_body='driver = "docker"')) == problems


def test_docker_config_types() -> None:
    body = 'driver = "docker"\n config {\n image = 3\n args = "-x"\n ports = "http"\n }'
    assert problems_of(hcl(task_body=body)) == [
        'group "web": task "server": config.image must be a string',
        'group "web": task "server": config.args must be a list of strings',
        'group "web": task "server": config.ports must be a list of port labels, like ["http"]',
    ]


def test_raw_exec_needs_a_command() -> None:
    body = 'driver = "raw_exec"\n config {\n args = ["-c", "x"]\n }'
    assert problems_of(hcl(task_body=body)) == [
        'group "web": task "server": missing config.command for the raw_exec driver'
    ]


def test_docker_ports_must_be_defined_in_the_group_network() -> None:
    body = 'driver = "docker"\n config {\n image = "x"\n ports = ["http", "metrics"]\n }'
    net = 'network {\n port "http" {\n to = 80\n }\n }'
    assert problems_of(hcl(group_body=net, task_body=body)) == [
        'group "web": task "server": config.ports: port "metrics" is not defined in the'
        " group's network"
    ]


def test_service_port_must_be_defined(monkeypatch: pytest.MonkeyPatch) -> None:
    service = 'network {\n port "http" {}\n }\n service {\n name = "web"\n port = "https"\n }'
    problems = problems_of(hcl(group_body=service))
    assert (
        'group "web": service "web": port "https" is not defined in the group\'s network'
        in problems
    )
    monkeypatch.setattr(support, "NOT_YET_SUPPORTED", frozenset())
    assert problems_of(hcl(group_body=service)) == [
        'group "web": service "web": port "https" is not defined in the group\'s network'
    ]
    # a task's service sees the group's ports; a numeric port is allowed
    task = 'driver = "mock"\n service {\n name = "web"\n port = "http"\n }'
    assert problems_of(hcl(group_body='network {\n port "http" {}\n }', task_body=task)) == []
    assert problems_of(hcl(group_body='service {\n name = "x"\n port = 8080\n }')) == []


def test_duplicate_port_labels() -> None:
    net = 'network {\n port "http" {}\n port "http" {\n static = 80\n }\n }'
    assert problems_of(hcl(group_body=net)) == ['group "web": network: duplicate port label "http"']


@pytest.mark.parametrize("static", [0, 65536, -1])
def test_static_port_out_of_range(static: int) -> None:
    net = f'network {{\n port "db" {{\n static = {static}\n }}\n }}'
    assert problems_of(hcl(group_body=net)) == [
        f'group "web": network: port "db": static port {static} is out of range 1..65535'
    ]


def test_static_port_used_twice() -> None:
    net = 'network {\n port "a" {\n static = 80\n }\n port "b" {\n static = 80\n }\n }'
    assert problems_of(hcl(group_body=net)) == [
        'group "web": network: port "b": static port 80 is already used by port "a"'
    ]


def test_only_host_network_mode() -> None:
    assert problems_of(hcl(group_body='network {\n mode = "bridge"\n }')) == [
        'group "web": network: mode "bridge" is not supported yet (only "host")'
    ]


def test_negative_resources() -> None:
    body = 'driver = "mock"\n resources {\n cpu = -1\n memory = -2\n memory_max = -3\n }'
    assert problems_of(hcl(task_body=body)) == [
        'group "web": task "server": resources.cpu must not be negative, got -1',
        'group "web": task "server": resources.memory must not be negative, got -2',
        'group "web": task "server": resources.memory_max must not be negative, got -3',
    ]


def test_memory_max_below_memory_and_cpu_with_cores() -> None:
    body = 'driver = "mock"\n resources {\n cpu = 100\n cores = 2\n memory = 256\n memory_max = 128\n }'
    assert problems_of(hcl(task_body=body)) == [
        'group "web": task "server": resources: set cpu or cores, not both',
        'group "web": task "server": resources.memory_max (128) must not be less than'
        " resources.memory (256)",
    ]


def test_task_name_with_a_slash() -> None:
    job = minimal()
    job.task_groups[0].tasks[0].name = "a/b"
    assert jobspec.validate(job) == [
        'group "web": task "a/b": task name "a/b" must not contain "/"'
    ]


# ---------------------------------------------------------------- durations


def test_negative_durations_from_json_or_grpc() -> None:
    job = minimal()
    job.task_groups[0].shutdown_delay = -SECOND
    job.task_groups[0].tasks[0].kill_timeout = -5 * SECOND
    assert jobspec.validate(job) == [
        'group "web": shutdown_delay must not be negative, got -1s',
        'group "web": task "server": kill_timeout must not be negative, got -5s',
    ]


def test_bad_durations_in_hcl_are_all_reported() -> None:
    problems = problems_of(
        hcl(
            group_body='shutdown_delay = "soon"\n restart {\n delay = "1x"\n }',
            task_body='driver = "mock"\n kill_timeout = "-"',
        )
    )
    assert [p.split(": invalid duration")[0] for p in problems] == [
        'group "web": shutdown_delay',
        'group "web": restart: delay',
        'group "web": task "server": kill_timeout',
    ]


def test_restart_policy_rules() -> None:
    assert problems_of(hcl(group_body='restart {\n mode = "never"\n }')) == [
        'group "web": restart: mode must be "fail" or "delay", got "never"'
    ]
    assert problems_of(hcl(group_body='restart {\n interval = "1s"\n }')) == [
        'group "web": restart: interval must be at least 5s, got 1s'
    ]
    assert problems_of(
        hcl(group_body='restart {\n attempts = 3\n delay = "1m"\n interval = "2m"\n }')
    ) == [
        'group "web": restart: cannot restart 3 times in an interval of 2m0s with a delay of 1m0s'
    ]
    assert problems_of(hcl(group_body='restart {\n attempts = 0\n mode = "delay"\n }')) == [
        'group "web": restart: mode "delay" with 0 attempts is ambiguous: use mode "fail", or'
        " attempts > 0"
    ]


# ---------------------------------------------------------------- gated blocks, checked too


def test_gated_blocks_are_still_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "NOT_YET_SUPPORTED", frozenset())
    text = hcl(
        job_body='constraint {\n operator = "like"\n }',
        group_body="""
    network {
      port "http" {}
    }
    update {
      min_healthy_time = "10m"
      healthy_deadline = "5m"
    }
    service {
      name     = "bad name"
      port     = "http"
      provider = "consul"
      check {
        type     = "script"
        interval = "100ms"
        timeout  = "0s"
      }
    }
""",
    )
    assert problems_of(text) == [
        'constraint #1: unknown operator "like"',
        "constraint #1: missing attribute",
        "constraint #1: missing value",
        'group "web": update: min_healthy_time (10m0s) must be less than healthy_deadline (5m0s)',
        'group "web": service "bad name": name "bad name" must be a valid DNS label (letters,'
        " digits and dashes, at most 63)",
        'group "web": service "bad name": provider "consul" is not supported (only "nomad")',
        'group "web": service "bad name": check #1: type "script" is not supported (http or tcp)',
        'group "web": service "bad name": check #1: interval must be at least 1s, got 100ms',
        'group "web": service "bad name": check #1: timeout must be positive, got 0s',
    ]


# ---------------------------------------------------------------- all at once


def test_every_problem_is_reported_at_once() -> None:
    text = """job "shop" {
  type     = "cron"
  priority = 200

  group "web" {
    count = -2
    network {
      port "http" {
        static = 70000
      }
    }
    task "app" {
      driver = "docker"
      config {
        ports = ["https"]
      }
      resources {
        memory = -1
      }
    }
    task "app" {
      driver = "raw_exec"
    }
  }

  group "empty" {}
}
"""
    with pytest.raises(jobspec.JobspecError) as info:
        jobspec.parse(text, "shop.hcl")
    assert str(info.value).splitlines() == [
        'shop.hcl:2:3: unknown job type "cron" (expected service, batch or system)',
        "shop.hcl:3:3: priority must be between 1 and 100, got 200",
        'shop.hcl:6:5: group "web": count must not be negative, got -2',
        'shop.hcl:9:9: group "web": network: port "http": static port 70000 is out of range'
        " 1..65535",
        'shop.hcl:14:7: group "web": task "app": missing config.image for the docker driver',
        'shop.hcl:14:7: group "web": task "app": config.ports: port "https" is not defined in'
        " the group's network",
        'shop.hcl:18:9: group "web": task "app": resources.memory must not be negative, got -1',
        'shop.hcl:21:5: group "web": duplicate task name "app"',
        # the second "app" is told apart by its position among the tasks
        'shop.hcl:21:5: group "web": task "app" #2: missing config.command for the raw_exec driver',
        'shop.hcl:26:3: group "empty": no tasks: a group needs at least one task',
    ]
    assert info.value.problems[0] == 'unknown job type "cron" (expected service, batch or system)'
    assert (info.value.line, info.value.col) == (2, 3)


# ---------------------------------------------------------------- update defaults (Nomad's)


def test_a_service_group_without_update_gets_nomads_default_strategy() -> None:
    job = minimal()
    structs.canonicalize(job)
    update = job.task_groups[0].update
    assert update == structs.default_update_strategy()
    assert update.max_parallel == 1 and update.min_healthy_time == 10 * structs.SECOND


def test_explicit_zeros_of_update_are_kept() -> None:
    """Nomad gives an explicit 0 a meaning (no deployment; healthy once running; no
    progress deadline): canonicalize must not replace it with the default."""
    job = minimal()
    job.task_groups[0].update.max_parallel = 0
    job.task_groups[0].update.min_healthy_time = 0
    job.task_groups[0].update.progress_deadline = 0
    structs.canonicalize(job)
    update = job.task_groups[0].update
    assert (update.max_parallel, update.min_healthy_time, update.progress_deadline) == (0, 0, 0)
    assert update.healthy_deadline == 5 * structs.MINUTE  # unset: the default


def test_hcl_zero_durations_of_update_are_kept() -> None:
    job = jobspec.parse(hcl(group_body='update {\n min_healthy_time = "0s"\n }'), "job.hcl")
    assert job.task_groups[0].update.HasField("min_healthy_time")
    assert job.task_groups[0].update.min_healthy_time == 0


@pytest.mark.parametrize("where", ["group", "job"], ids=["group update block", "job update block"])
def test_a_batch_job_may_not_have_an_update_block(where: str) -> None:
    block = "update {\n max_parallel = 2\n }"
    text = hcl(
        group_body=block if where == "group" else "",
        job_body='type = "batch"\n' + (block if where == "job" else ""),
    )
    problems = problems_of(text)
    assert any('job type "batch" does not allow an update block' in p for p in problems), problems
