"""The decisions of scripts/ensure-docker.sh, without touching the real machine.

The script runs with a PATH that holds only fakes (a `docker` client, `dockerd`,
`apt-get`, `dpkg-query`, `id`) and the few real tools it needs (bash, timeout,
setsid...), so the machine's own Docker, if any, is invisible. The fakes keep
their state in files: the engine answers once the fake dockerd has started, and
apt-get records its arguments and "installs" docker.io by dropping a fake dockerd
and docker.io's client into place.

The case that broke fresh machines: a stand-alone `docker` client on PATH whose
`docker info` fails, and no `dockerd`. The script must ask apt for docker.io.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-docker.sh"
REAL_TOOLS = (
    "bash",
    "timeout",
    "cat",
    "grep",
    "mkdir",
    "tail",
    "sleep",
    "setsid",
    "nohup",
    "dirname",
    "head",
    "sed",
    "touch",
    "rm",
    "cp",
    "chmod",
)

# A docker client: the engine "answers" when the fake dockerd has started; a
# client marked broken never reaches it (a client the engine cannot talk to).
FAKE_CLIENT = """#!/bin/bash
state="{state}"
[[ -f "$state/engine-up" && ! -f "$state/{broken}" ]] || {{ echo "Cannot connect to the Docker daemon" >&2; exit 1; }}
case "$1 $2 $3" in
  "info"*) echo "Server Version: 20.10.24-fake" ;;
  "version --format {{{{.Server.Version}}}}") echo 20.10.24-fake ;;
  "version --format {{{{.Client.Version}}}}") echo {version} ;;
esac
exit 0
"""
# An unreachable-engine client still tells its own version.
FAKE_CLIENT_VERSION_ONLY = """#!/bin/bash
if [[ "$1 $2 $3" == "version --format {{{{.Client.Version}}}}" ]]; then echo {version}; exit 0; fi
echo "Error response from daemon: client version 99.0 is too new" >&2
exit 1
"""
FAKE_DOCKERD = """#!/bin/bash
touch "{state}/engine-up"
echo $$ > "{state}/dockerd-ran"
exec sleep 60
"""
FAKE_APT = """#!/bin/bash
echo "$*" >> "{state}/apt-calls"
if [[ "$1" == install && " $* " == *" docker.io "* ]]; then
  cp "{templates}/dockerd" "{bin}/dockerd"
  cp "{templates}/pkg-docker" "{pkg_client}"
  chmod +x "{bin}/dockerd" "{pkg_client}"
fi
if [[ "$1" == install && " $* " == *" busybox-static "* ]]; then touch "{state}/busybox-static"; fi
exit 0
"""
FAKE_DPKG_QUERY = """#!/bin/bash
[[ -f "{state}/busybox-static" ]] && {{ echo -n "install ok installed"; exit 0; }}
exit 1
"""
FAKE_ID = """#!/bin/bash
echo {uid}
"""


@dataclass
class Machine:
    """A fake machine: a PATH of fakes and real basics, with its state in files."""

    root: Path
    bin: Path = field(init=False)
    state: Path = field(init=False)
    templates: Path = field(init=False)
    pkg_client: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.state = self.root / "state"
        self.templates = self.root / "templates"
        self.pkg_client = self.root / "usr-bin" / "docker"
        for d in (self.bin, self.state, self.templates, self.pkg_client.parent):
            d.mkdir(parents=True)
        for tool in REAL_TOOLS:
            real = shutil.which(tool)
            assert real, f"{tool} is needed to run the script"
            (self.bin / tool).symlink_to(real)
        self._write(self.templates / "dockerd", FAKE_DOCKERD.format(state=self.state))
        self._write(
            self.templates / "pkg-docker",
            FAKE_CLIENT.format(state=self.state, broken="never", version="20.10.24-fake"),
        )
        self.set_uid(0)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    # What the machine has.
    def standalone_client(self, version: str = "28.2.2") -> None:
        """The machine image's client: talks to an engine when one runs."""
        self._write(
            self.bin / "docker",
            FAKE_CLIENT.format(state=self.state, broken="client-broken", version=version),
        )

    def client_cannot_talk_to_engine(self) -> None:
        (self.state / "client-broken").touch()
        self._write(self.bin / "docker", FAKE_CLIENT_VERSION_ONLY.format(version="99.0-fake"))

    def apt(self) -> None:
        text = FAKE_APT.format(
            state=self.state, templates=self.templates, bin=self.bin, pkg_client=self.pkg_client
        )
        self._write(self.bin / "apt-get", text)
        self._write(self.bin / "dpkg-query", FAKE_DPKG_QUERY.format(state=self.state))

    def busybox_static(self) -> None:
        (self.state / "busybox-static").touch()

    def engine_running(self) -> None:
        (self.state / "engine-up").touch()

    def dockerd_installed(self) -> None:
        shutil.copy(self.templates / "dockerd", self.bin / "dockerd")
        shutil.copy(self.templates / "pkg-docker", self.pkg_client)

    def set_uid(self, uid: int) -> None:
        self._write(self.bin / "id", FAKE_ID.format(uid=uid))

    # Running the script.
    def run(self, ci: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            # docker.io's client lands after the image's own, as /usr/bin after /usr/local/bin.
            "PATH": f"{self.bin}:{self.pkg_client.parent}",
            "HOME": str(self.root),
            "CORRAL_LOG_DIR": str(self.root / "logs"),
            "CORRAL_DOCKER_WAIT": "10",
            "CORRAL_DOCKER_PKG_CLIENT": str(self.pkg_client),
            "DOCKER_PIDFILE": str(self.state / "docker.pid"),
            "CORRAL_SYSTEMD_DIR": str(self.root / "no-systemd"),
        }
        if ci:
            env["CI"] = "true"
        try:
            return subprocess.run(
                [str(self.bin / "bash"), str(SCRIPT)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            self._stop_fake_dockerd()

    def _stop_fake_dockerd(self) -> None:
        ran = self.state / "dockerd-ran"
        if ran.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ran.read_text()), signal.SIGKILL)

    def apt_calls(self) -> list[str]:
        calls = self.state / "apt-calls"
        return calls.read_text().splitlines() if calls.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def output(res: subprocess.CompletedProcess[str]) -> str:
    return (res.stdout + res.stderr).strip()


def test_standalone_client_without_engine_installs_docker_io(machine: Machine) -> None:
    """The fresh-machine bug: `docker` on PATH, `docker info` fails, no dockerd."""
    machine.standalone_client()
    machine.apt()
    res = machine.run()
    assert res.returncode == 0, output(res)
    assert "install -y docker.io busybox-static" in machine.apt_calls()
    assert (machine.state / "dockerd-ran").exists(), "the script never started dockerd"
    lines = output(res).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ensure-docker: installed docker.io busybox-static; started dockerd")
    assert "answers through" in lines[0] and "client 28.2.2" in lines[0]
    assert (machine.root / "logs" / "dockerd.pid").read_text().strip().isdigit()


def test_installed_but_stopped_engine_is_started_without_apt(machine: Machine) -> None:
    machine.standalone_client()
    machine.apt()
    machine.busybox_static()
    machine.dockerd_installed()
    res = machine.run()
    assert res.returncode == 0, output(res)
    assert machine.apt_calls() == []
    assert output(res).startswith("ensure-docker: started dockerd")


def test_engine_already_answering_changes_nothing(machine: Machine) -> None:
    machine.standalone_client()
    machine.apt()
    machine.busybox_static()
    machine.engine_running()
    res = machine.run()
    assert res.returncode == 0, output(res)
    assert machine.apt_calls() == []
    assert not (machine.state / "dockerd-ran").exists()
    assert output(res) == (
        "ensure-docker: Docker engine 20.10.24-fake already answers through "
        f"{machine.bin / 'docker'} (client 28.2.2); nothing to do"
    )


def test_engine_answering_still_gets_busybox_static(machine: Machine) -> None:
    machine.standalone_client()
    machine.apt()
    machine.engine_running()
    res = machine.run()
    assert res.returncode == 0, output(res)
    assert machine.apt_calls() == ["update", "install -y busybox-static"]
    assert output(res).startswith("ensure-docker: installed busybox-static; Docker engine")


def test_no_client_at_all_installs_docker_io(machine: Machine) -> None:
    machine.apt()
    machine.busybox_static()
    res = machine.run()
    assert res.returncode == 0, output(res)
    assert machine.apt_calls() == ["update", "install -y docker.io"]
    assert f"answers through {machine.pkg_client} (client 20.10.24-fake)" in output(res)


@pytest.mark.parametrize("ci", [True, False])
def test_not_root(machine: Machine, ci: bool) -> None:
    machine.standalone_client()
    machine.apt()
    machine.busybox_static()
    machine.set_uid(1000)
    res = machine.run(ci=ci)
    assert machine.apt_calls() == []
    text = output(res)
    assert len(text.splitlines()) == 1, text
    assert "this is not root, so docker.io cannot be installed here" in text
    if ci:
        assert res.returncode == 1 and res.stderr.strip() == text
    else:
        assert res.returncode == 0 and text.endswith("tests that need Docker will skip")


@pytest.mark.parametrize("ci", [True, False])
def test_no_apt_get(machine: Machine, ci: bool) -> None:
    machine.standalone_client()
    res = machine.run(ci=ci)
    text = output(res)
    assert len(text.splitlines()) == 1, text
    assert "apt-get is missing, so docker.io cannot be installed here" in text
    assert res.returncode == (1 if ci else 0)


def test_client_on_path_that_cannot_talk_to_the_engine_is_named(machine: Machine) -> None:
    machine.apt()
    machine.busybox_static()
    machine.dockerd_installed()
    machine.client_cannot_talk_to_engine()
    res = machine.run()
    assert res.returncode == 1
    text = output(res)
    assert f"answers through {machine.pkg_client}, but not through the docker on PATH" in text
    assert f"{machine.bin / 'docker'} (client 99.0-fake)" in text
    assert f"put {machine.pkg_client.parent} before {machine.bin} on PATH" in text


def test_failed_apt_install_fails_ci_with_its_log(machine: Machine) -> None:
    machine.standalone_client()
    (machine.bin / "apt-get").write_text(
        "#!/bin/bash\necho 'E: Unable to locate package'\nexit 100\n"
    )
    (machine.bin / "apt-get").chmod(0o755)
    res = machine.run()
    assert res.returncode == 1
    assert "E: Unable to locate package" in res.stderr
    assert "apt-get install docker.io busybox-static failed" in res.stderr
