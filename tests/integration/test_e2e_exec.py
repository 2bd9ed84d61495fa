"""End to end with real processes: a dev agent subprocess, the CLI as a subprocess,
raw_exec tasks that really serve HTTP. No Docker needed."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.support.agent import DevAgent, run_cli
from tests.support.env import free_port
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with DevAgent(base_dir=tmp_path_factory.mktemp("dev")) as a:
        yield a


def cli(agent: DevAgent, *args: str, **kw):  # type: ignore[no-untyped-def]
    return run_cli(*args, addr=agent.rpc_addr, **kw)


def job_status(agent: DevAgent, job_id: str) -> dict:  # type: ignore[type-arg]
    out = cli(agent, "job", "status", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def running_allocs(agent: DevAgent, job_id: str, count: int) -> list[dict]:  # type: ignore[type-arg]
    def check() -> list[dict] | None:  # type: ignore[type-arg]
        allocs = [
            a for a in job_status(agent, job_id)["Allocations"] if a["DesiredStatus"] == "run"
        ]
        if len(allocs) == count and all(a["ClientStatus"] == "running" for a in allocs):
            return allocs
        return None

    return wait_for(check, timeout=60, message=f"{count} running allocations of {job_id}")


def http_get(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as resp:
        return resp.read().decode()


def test_raw_exec_job_end_to_end(agent: DevAgent) -> None:
    run = cli(agent, "job", "run", str(ROOT / "examples" / "hello-exec.hcl"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'finished with status "complete"' in run.stdout

    allocs = running_allocs(agent, "hello-exec", 2)
    for alloc in allocs:
        ports = alloc["AllocatedResources"]["Shared"]["Ports"]
        assert [p["Label"] for p in ports] == ["http"]
        body = wait_for(
            lambda p=ports[0]: _try_get(p["HostIP"], p["Value"]), timeout=30, message="HTTP answer"
        )
        assert alloc["ID"] in body, body

    status = cli(agent, "job", "status", "hello-exec")
    assert status.returncode == 0 and "running" in status.stdout

    prefix = allocs[0]["ID"][:8]
    alloc_status = cli(agent, "alloc", "status", prefix)
    assert alloc_status.returncode == 0, alloc_status.stderr
    assert "Started" in alloc_status.stdout

    # The Python server logs each request on stderr: logs flow back through the server.
    ports = allocs[0]["AllocatedResources"]["Shared"]["Ports"]
    http_get(ports[0]["HostIP"], ports[0]["Value"])
    logs = wait_for(
        lambda: (lambda o: o.stdout if "GET /" in o.stdout else None)(
            cli(agent, "alloc", "logs", prefix, "--stderr")
        ),
        timeout=20,
        message="request log line in stderr",
    )
    assert "GET /" in logs

    nodes = cli(agent, "node", "status", "--json")
    assert nodes.returncode == 0
    assert json.loads(nodes.stdout)[0]["Status"] == "ready"

    stop = cli(agent, "job", "stop", "hello-exec")
    assert stop.returncode == 0, stop.stderr

    def all_stopped() -> bool:
        allocs = job_status(agent, "hello-exec")["Allocations"]
        return all(a["ClientStatus"] == "complete" for a in allocs)

    wait_for(all_stopped, timeout=30, message="allocations complete after job stop")
    for alloc in allocs:
        p = alloc["AllocatedResources"]["Shared"]["Ports"][0]
        assert _try_get(p["HostIP"], p["Value"]) is None, "the task still answers after stop"


def _try_get(host: str, port: int) -> str | None:
    try:
        return http_get(host, port)
    except OSError:
        return None


def test_task_that_cannot_start_fails_with_the_driver_message(
    agent: DevAgent, tmp_path: Path
) -> None:
    job = tmp_path / "broken.hcl"
    job.write_text(
        """
job "broken" {
  group "g" {
    restart {
      attempts = 0
      mode = "fail"
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/no/such/binary-corral"
      }
    }
  }
}
"""
    )
    # A service job gets a deployment (Nomad's default update strategy); `job run`
    # follows it, and its only allocation failing fails it: exit 1, saying why.
    run = cli(agent, "job", "run", str(job))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "failed: Failed due to unhealthy allocations" in run.stdout

    def failed() -> dict | None:  # type: ignore[type-arg]
        allocs = job_status(agent, "broken")["Allocations"]
        return allocs[0] if allocs and allocs[0]["ClientStatus"] == "failed" else None

    alloc = wait_for(failed, timeout=30, message="the allocation fails")
    shown = cli(agent, "alloc", "status", alloc["ID"][:8])
    assert "/no/such/binary-corral" in shown.stdout, shown.stdout
    # The agent stays healthy: it still answers and schedules.
    assert cli(agent, "node", "status").returncode == 0
    cli(agent, "job", "stop", "--purge", "broken")


def test_invalid_job_file_reports_position_and_changes_nothing(
    agent: DevAgent, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.hcl"
    bad.write_text('job "x" {\n  group "g" {\n    count = \n  }\n}\n')
    out = cli(agent, "job", "run", str(bad))
    assert out.returncode == 1
    assert f"{bad}:" in out.stderr and "Traceback" not in out.stderr
    invalid = tmp_path / "invalid.hcl"
    invalid.write_text(
        'job "invalid" {\n  group "g" {\n    count = -1\n    task "t" {\n      driver = "warp"\n    }\n  }\n}\n'
    )
    out = cli(agent, "job", "run", str(invalid))
    assert out.returncode == 1
    assert "warp" in out.stderr and "count" in out.stderr.lower()
    listing = json.loads(cli(agent, "job", "status", "--json").stdout)
    assert "invalid" not in [j["ID"] for j in listing]


def test_cli_without_server_names_the_address() -> None:
    port = free_port()
    out = run_cli("job", "status", addr=f"127.0.0.1:{port}", timeout=30)
    assert out.returncode == 1
    assert f"127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_http_api_speaks_nomad_json(agent: DevAgent) -> None:
    job = json.loads((ROOT / "examples" / "hello.json").read_text())
    job["Job"]["ID"] = job["Job"]["Name"] = "hello-json"
    job["Job"]["TaskGroups"][0]["Tasks"][0]["Driver"] = "mock"
    job["Job"]["TaskGroups"][0]["Tasks"][0]["Config"] = {"run_for": "1h"}
    req = urllib.request.Request(
        f"{agent.http_url}/v1/jobs", data=json.dumps(job).encode(), method="PUT"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["EvalID"]
    with urllib.request.urlopen(f"{agent.http_url}/v1/job/hello-json", timeout=10) as resp:
        body = json.loads(resp.read())
        assert int(resp.headers["X-Nomad-Index"]) > 0
    assert body["ID"] == "hello-json" and body["TaskGroups"][0]["Count"] == 2
    assert isinstance(body["CreateIndex"], int)
    bad = urllib.request.Request(
        f"{agent.http_url}/v1/jobs", data=b'{"Job": {"ID": "x", "Bogus": 1}}', method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 400 and b"Bogus" in err.value.read()
    cli(agent, "job", "stop", "--purge", "hello-json")
    assert os.path.isdir(agent.data_dir)


def test_system_gc_reaps_finished_work_and_keeps_running_work(tmp_path: Path) -> None:
    """``corral system gc`` (nomad system gc): a finished batch job's evaluation and
    allocation are deleted at once, a running service's allocation is kept."""
    (tmp_path / "done.hcl").write_text(
        """
job "done" {
  type = "batch"
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
    }
  }
}
"""
    )
    (tmp_path / "busy.hcl").write_text(
        """
job "busy" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args = ["300"]
      }
    }
  }
}
"""
    )
    with DevAgent(base_dir=tmp_path / "gc") as agent:
        for name in ("done", "busy"):
            run = cli(agent, "job", "run", "-detach", str(tmp_path / f"{name}.hcl"))
            assert run.returncode == 0, run.stdout + run.stderr
        wait_for(
            lambda: (
                [a["ClientStatus"] for a in job_status(agent, "done")["Allocations"]]
                == ["complete"]
            ),
            timeout=60,
            message="the batch job completes",
        )
        running_allocs(agent, "busy", 1)

        out = cli(agent, "system", "gc")
        assert out.returncode == 0, out.stderr
        assert " 1 allocations and " in out.stdout, out.stdout
        assert job_status(agent, "done")["Allocations"] == []
        assert len(running_allocs(agent, "busy", 1)) == 1
        again = cli(agent, "system", "gc", "--json")
        assert json.loads(again.stdout) == {
            "EvalsDeleted": 0,
            "AllocsDeleted": 0,
            "DeploymentsDeleted": 0,
        }
        # Nomad's HTTP endpoint, for API scripts.
        req = urllib.request.Request(f"{agent.http_url}/v1/system/gc", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            assert int(resp.headers["X-Nomad-Index"]) > 0
