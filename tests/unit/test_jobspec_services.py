"""Service blocks: what validation refuses (issue "Services, health checks and Traefik")."""

from __future__ import annotations

import pytest

from corral import jobspec


def job_with(service: str) -> str:
    return f"""
job "web" {{
  group "g" {{
    network {{
      port "http" {{}}
    }}
    {service}
    task "t" {{
      driver = "mock"
    }}
  }}
}}
"""


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ('service {\n port = "http"\n}', "service has no name"),
        ('service {\n name = "web"\n port = "nope"\n}', "nope"),
        (
            'service {\n name = "web"\n port = "http"\n check {\n type = "grpc"\n interval = "1s"\n timeout = "1s"\n }\n}',
            "grpc",
        ),
    ],
)
def test_bad_services_are_refused_with_the_reason(service: str, expected: str) -> None:
    with pytest.raises(jobspec.JobspecError) as err:
        jobspec.parse(job_with(service), "web.hcl")
    assert expected in str(err.value)


def test_a_named_service_with_an_http_check_parses() -> None:
    job = jobspec.parse(
        job_with(
            'service {\n name = "web"\n port = "http"\n tags = ["traefik.enable=true"]\n'
            ' check {\n type = "http"\n path = "/health"\n interval = "1s"\n timeout = "1s"\n }\n}'
        ),
        "web.hcl",
    )
    svc = job.task_groups[0].services[0]
    assert svc.name == "web" and svc.checks[0].path == "/health"
    assert svc.checks[0].interval == 1_000_000_000
