#!/usr/bin/env bash
# corral in one minute: start a 3-server cluster and a client on this machine
# (CORRAL_DEMO_SERVERS=1: one dev agent instead), run the "hello" job, show its
# status, ask each allocation's HTTP endpoint, stop the job and the cluster.
#
# With a Docker engine it runs examples/hello.hcl (docker driver, the local
# corral-busybox image, built here when missing); without one it says so and runs
# examples/hello-exec.hcl (raw_exec driver) instead.
#
# Ports: 4646/4647/4648 when free, else free ones. The agent's log and data live
# in a temp dir (the log is copied to $CORRAL_LOG_DIR/demo-agent.log at the end).
# Called by `make demo`, which first runs scripts/setup.sh and
# scripts/ensure-docker.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
CORRAL="$VENV/bin/corral"
LOG_DIR="${CORRAL_LOG_DIR:-/tmp/corral-logs}"
JOB="" # from the job file's `job "..."` line
IMAGE=corral-busybox:latest

say() { echo "demo: $*"; }
die() {
	echo "demo: $*" >&2
	exit 1
}

[[ -x "$PY" && -x "$CORRAL" ]] || die "no venv at $VENV; run scripts/setup.sh (or make demo)"
mkdir -p "$LOG_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/corral-demo.XXXXXX")"
AGENT_LOG="$WORK/agent.log"
AGENT_PID=""  # the client (or the dev agent)
SERVER_PIDS=()
SERVERS="${CORRAL_DEMO_SERVERS:-3}"
JOB_RUNNING=0

agent_alive() { [[ -n "$AGENT_PID" ]] && kill -0 "$AGENT_PID" 2>/dev/null; }

show_agent_log() {
	local f
	for f in "$WORK"/*.log; do
		echo "----- last 30 lines of $f -----" >&2
		tail -n 30 "$f" >&2 || true
	done
}

# Poll "$@" until it succeeds, for at most $1 seconds; fail early if the agent died.
poll() {
	local seconds=$1 what=$2
	shift 2
	local deadline=$((SECONDS + seconds))
	until "$@"; do
		agent_alive || {
			show_agent_log
			die "the agent exited while waiting for $what"
		}
		if ((SECONDS >= deadline)); then
			show_agent_log
			die "timed out after ${seconds}s waiting for $what"
		fi
		sleep 0.5
	done
}

# JSON helpers: the venv's Python reads the CLI's --json output (no jq needed).
HELPER="$WORK/demo_helper.py"
cat >"$HELPER" <<'EOF'
"""demo.sh's helpers; the CLI's --json output comes on stdin."""
import json
import socket
import sys
import time
import urllib.request


def load():
    try:
        return json.load(sys.stdin)
    except ValueError:  # the CLI failed (server not up yet): "not yet"
        sys.exit(1)


def allocations(data):
    if isinstance(data, dict):
        return data.get("Allocations") or []
    return data


def node_ready():
    data = load()
    nodes = data.get("Nodes", [data]) if isinstance(data, dict) else data
    return 0 if any(n.get("Status") == "ready" for n in nodes) else 1


def allocs_running():
    """0: every wanted allocation runs; 1: not yet; 2: one failed (give up)."""
    data = load()
    job = (data.get("Job") or data) if isinstance(data, dict) else {}
    want = sum(int(g.get("Count", 1)) for g in job.get("TaskGroups") or []) or 1
    live = [a for a in allocations(data) if a.get("DesiredStatus", "run") == "run"]
    failed = [a for a in live if a.get("ClientStatus") in ("failed", "lost")]
    for a in failed:
        print(
            f"allocation {a.get('ID', '?')[:8]} is {a.get('ClientStatus')}: "
            f"{a.get('ClientDescription', '')}",
            file=sys.stderr,
        )
    if failed:
        return 2
    running = [a for a in live if a.get("ClientStatus") == "running"]
    return 0 if len(running) >= want and len(running) == len(live) else 1


def allocs_stopped():
    active = ("pending", "running")
    return 1 if any(a.get("ClientStatus") in active for a in allocations(load())) else 0


def fetch():
    """GET / on every port of every running allocation (retrying for a few seconds
    while the server inside comes up) and print the answers."""
    failures = 0
    for a in allocations(load()):
        if a.get("ClientStatus") != "running":
            continue
        ports = ((a.get("AllocatedResources") or {}).get("Shared") or {}).get("Ports") or []
        for p in ports:
            host = p.get("HostIP") or "127.0.0.1"
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1"
            url = f"http://{host}:{p.get('Value')}/"
            name = f"alloc {a.get('ID', '?')[:8]} port {p.get('Label', '?')}"
            deadline = time.monotonic() + 15
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=3) as resp:
                        body = resp.read(4096).decode(errors="replace").strip()
                        first = body.splitlines()[0][:100] if body else ""
                        print(f"  {name}: GET {url} -> {resp.status} {first}")
                    break
                except Exception as exc:
                    if time.monotonic() >= deadline:
                        print(f"  {name}: GET {url} -> no answer ({exc})")
                        failures += 1
                        break
                    time.sleep(0.3)
    return 1 if failures else 0


def ports():
    """Nomad's default ports (4646-4648, then +1000 per server) when free, else
    any free ones: three per server."""
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1

    def free(port):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    chosen = [base + 1000 * i for i in range(n) for base in (4646, 4647, 4648)]
    if not all(free(p) for p in chosen):
        chosen = []
        while len(chosen) < 3 * n:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in chosen:
                chosen.append(port)
    print(*chosen)
    return 0


def through_proxy():
    """GET the proxy until every instance answered (or 20 s): print each answer."""
    url, want, host = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    seen = {}
    deadline = time.monotonic() + 20
    while len(seen) < want and time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Host": host})
            with urllib.request.urlopen(req, timeout=3) as resp:
                body = resp.read(4096).decode(errors="replace").strip()
                seen.setdefault(body, resp.status)
        except Exception:
            time.sleep(0.2)
    for body, status in seen.items():
        print(f"  GET {url} -> {status} {body[:100]}")
    return 0 if len(seen) >= want else 1


def traffic():
    """Requests through the proxy without pause until the stop file appears (at most
    10 minutes, loopback only); prints "N requests, F failed" (5xx and connection
    errors count as failed) and the versions seen."""
    import http.client

    url, stop_file, vhost = sys.argv[2], sys.argv[3], sys.argv[4]
    host, port = url.split("//")[1].split("/")[0].split(":")
    sent = failed = 0
    versions = {}
    deadline = time.monotonic() + 600
    import os

    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        sent += 1
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", "/", headers={"Host": vhost})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            conn.close()
            if resp.status >= 300:
                failed += 1
            else:
                words = body.split()
                v = words[1] if len(words) > 1 else "?"
                versions[v] = versions.get(v, 0) + 1
        except Exception:
            failed += 1
    print(f"{sent} requests, {failed} failed (answers by version: {versions})")
    return 0 if failed == 0 else 1


sys.exit(globals()[sys.argv[1].replace("-", "_")]())
EOF

node_ready() { "$CORRAL" node status --json 2>/dev/null | "$PY" "$HELPER" node-ready; }

allocs_running() {
	local rc=0
	"$CORRAL" job status "$JOB" --json 2>/dev/null | "$PY" "$HELPER" allocs-running || rc=$?
	if ((rc == 2)); then
		"$CORRAL" job status "$JOB" || true
		die "an allocation of $JOB failed; see: corral alloc status <id> / corral alloc logs <id>"
	fi
	return "$rc"
}

allocs_stopped() { "$CORRAL" job status "$JOB" --json 2>/dev/null | "$PY" "$HELPER" allocs-stopped; }

curl_ok() { "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" >/dev/null 2>&1; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if ((JOB_RUNNING)) && agent_alive; then
		# A client that is not --dev leaves tasks running when it stops (as Nomad):
		# stop every job this demo may have started first.
		local j
		for j in rolling traefik "$JOB"; do
			"$CORRAL" job stop "$j" >/dev/null 2>&1 || continue
			JOB="$j"
			local deadline=$((SECONDS + 30))
			until allocs_stopped || ((SECONDS >= deadline)); do sleep 0.5; done
		done
	fi
	[[ -z "${LOAD_PID:-}" ]] || kill "$LOAD_PID" 2>/dev/null || true
	local pid deadline
	for pid in $AGENT_PID "${SERVER_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in $AGENT_PID "${SERVER_PIDS[@]}"; do
		deadline=$((SECONDS + 20))
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
		if kill -0 "$pid" 2>/dev/null; then
			say "agent $pid ignored SIGTERM for 20s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	[[ -z "$AGENT_PID" ]] || say "agents stopped"
	cp "$WORK"/*.log "$LOG_DIR/" 2>/dev/null || true
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Ports: Nomad's defaults when free, else any free ones (three per server).
if ((SERVERS > 1)); then
	read -r -a PORTS < <("$PY" "$HELPER" ports "$SERVERS" </dev/null)
else
	read -r -a PORTS < <("$PY" "$HELPER" ports 1 </dev/null)
fi
export CORRAL_ADDR="127.0.0.1:${PORTS[1]}"

# Which job: docker when an engine answers, raw_exec otherwise.
# (CORRAL_DEMO_JOB=<file> runs another job file.)
if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
	JOBFILE="${CORRAL_DEMO_JOB:-$ROOT/examples/hello.hcl}"
	docker image inspect "$IMAGE" >/dev/null 2>&1 || "$ROOT/scripts/build-image.sh"
else
	JOBFILE="${CORRAL_DEMO_JOB:-$ROOT/examples/hello-exec.hcl}"
	say "no Docker engine answers: running $(basename "$JOBFILE") with the raw_exec driver instead"
fi
[[ -f "$JOBFILE" ]] || die "$JOBFILE is missing"
JOB="$(sed -n 's/^job "\([^"]*\)".*/\1/p' "$JOBFILE" | head -n 1)"
[[ -n "$JOB" ]] || die "no job \"...\" block found in $JOBFILE"

# Own sessions: a Ctrl-C reaches this script, whose trap stops the job and then the agents.
if ((SERVERS > 1)); then
	KEY="$("$PY" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')"
	RAFT=() RPC=()
	for ((i = 0; i < SERVERS; i++)); do
		RAFT+=("127.0.0.1:${PORTS[$((3 * i + 2))]}")
		RPC+=("127.0.0.1:${PORTS[$((3 * i + 1))]}")
	done
	PEERS="$(IFS=,; echo "${RAFT[*]}")"
	say "starting a $SERVERS-server cluster (raft peers $PEERS) and one client"
	for ((i = 0; i < SERVERS; i++)); do
		setsid "$CORRAL" agent --server --data-dir "$WORK/server$i" --bind 127.0.0.1 \
			--http-port "${PORTS[$((3 * i))]}" --rpc-port "${PORTS[$((3 * i + 1))]}" \
			--raft-port "${PORTS[$((3 * i + 2))]}" --servers "$PEERS" --encrypt "$KEY" \
			>"$WORK/server$i.log" 2>&1 </dev/null &
		SERVER_PIDS+=($!)
	done
	PATH="$VENV/bin:$PATH" setsid "$CORRAL" agent --client --enable-raw-exec --data-dir "$WORK/client" --bind 127.0.0.1 \
		--servers "$(IFS=,; echo "${RPC[*]}")" >"$WORK/client.log" 2>&1 </dev/null &
	AGENT_PID=$!
else
	say "starting a dev agent: corral agent --dev (gRPC $CORRAL_ADDR, HTTP 127.0.0.1:${PORTS[0]}, log $AGENT_LOG)"
	PATH="$VENV/bin:$PATH" setsid "$CORRAL" agent --dev --data-dir "$WORK/data" --bind 127.0.0.1 \
		--http-port "${PORTS[0]}" --rpc-port "${PORTS[1]}" --raft-port "${PORTS[2]}" \
		>"$AGENT_LOG" 2>&1 </dev/null &
	AGENT_PID=$!
fi

poll 60 "a ready node" node_ready
if ((SERVERS > 1)); then
	say "\$ corral server members"
	"$CORRAL" server members 2>/dev/null || "$CORRAL" operator raft list-peers 2>/dev/null || true
fi
say "node ready:"
"$CORRAL" node status

say "\$ corral job run ${JOBFILE#"$ROOT"/}"
JOB_RUNNING=1
timeout 120 "$CORRAL" job run "$JOBFILE"

poll 120 "every allocation of $JOB to run" allocs_running
say "\$ corral job status $JOB"
"$CORRAL" job status "$JOB"

say "asking each allocation's HTTP endpoint:"
"$CORRAL" job status "$JOB" --json | "$PY" "$HELPER" fetch

say "\$ corral job stop $JOB"
"$CORRAL" job stop "$JOB"
poll 60 "the allocations of $JOB to stop" allocs_stopped
JOB_RUNNING=0
if [[ "$JOBFILE" == "$ROOT/examples/hello.hcl" && -x "$VENV/bin/traefik" ]]; then
	# Traefik as a system job (raw_exec), pointed at the first server's HTTP API.
	read -r -a PROXY < <("$PY" "$HELPER" ports 1 </dev/null)
	WEB_PORT="${PROXY[0]}" ADMIN_PORT="${PROXY[1]}"
	sed -e "s#http://127.0.0.1:4646#http://127.0.0.1:${PORTS[0]}#" \
		-e "s/static = 8080/static = $WEB_PORT/" -e "s/static = 8081/static = $ADMIN_PORT/" \
		"$ROOT/examples/traefik.hcl" >"$WORK/traefik.hcl"
	say "\$ corral job run examples/traefik.hcl   (Traefik on 127.0.0.1:$WEB_PORT, stock Nomad provider)"
	JOB=traefik JOB_RUNNING=1
	timeout 120 "$CORRAL" job run "$WORK/traefik.hcl"
	poll 60 "Traefik to answer /ping" curl_ok "http://127.0.0.1:$ADMIN_PORT/ping"
	TRAEFIK_UP=1

	say "\$ corral job run examples/rolling.hcl   (4 instances, update max_parallel = 1)"
	JOB=rolling
	timeout 300 "$CORRAL" job run "$ROOT/examples/rolling.hcl"
	say "through Traefik (Host: rolling.localhost):"
	"$PY" "$HELPER" through-proxy "http://127.0.0.1:$WEB_PORT/" 4 rolling.localhost

	say "rolling update v1 -> v2 while requests flow without pause:"
	sed 's/VERSION = "v1"/VERSION = "v2"/' "$ROOT/examples/rolling.hcl" >"$WORK/rolling-v2.hcl"
	"$PY" "$HELPER" traffic "http://127.0.0.1:$WEB_PORT/" "$WORK/stop-load" rolling.localhost >"$WORK/load.out" 2>&1 &
	LOAD_PID=$!
	poll 30 "the load generator to start" test -e /proc/$LOAD_PID
	say "\$ corral job run rolling-v2.hcl"
	DEPLOY_RC=0
	timeout 300 "$CORRAL" job run "$WORK/rolling-v2.hcl" || DEPLOY_RC=$?
	touch "$WORK/stop-load"
	LOAD_RC=0
	wait "$LOAD_PID" || LOAD_RC=$?
	say "$(cat "$WORK/load.out")"
	((DEPLOY_RC == 0)) || die "the rolling update did not succeed (exit $DEPLOY_RC)"
	((LOAD_RC == 0)) || die "requests failed during the rolling update"
	"$CORRAL" job stop rolling >/dev/null
	poll 60 "the allocations of rolling to stop" allocs_stopped
	JOB=traefik
	"$CORRAL" job stop traefik >/dev/null
	poll 60 "Traefik to stop" allocs_stopped
	JOB_RUNNING=0
fi

say "done: the jobs ran, answered and stopped; stopping the agents"
