#!/usr/bin/env bash
# Make a Docker engine answer on this machine, when that is possible.
#
# Each step decides from what it needs, never from whatever happens to be on PATH:
#
#   engine   an engine must answer. When none does and `dockerd` is not installed,
#            Debian's docker.io is installed, whatever `docker` client is on PATH
#            (a machine image may ship a stand-alone client and no engine).
#   client   the `docker` on PATH is what the scripts (build-image.sh, demo.sh)
#            call, so it must talk to the engine that answers. When it cannot but
#            the client docker.io installed (/usr/bin/docker) can, we say so and
#            stop, naming both, rather than leave the scripts to fail later. (A 28.x
#            client negotiates down to Debian's 20.10 engine, API 1.41: checked.)
#   image    busybox-static (build-image.sh needs a static busybox; Debian's
#            `busybox` package is dynamically linked).
#
# Idempotent: when an engine answers through the client on PATH and busybox-static
# is installed, it prints one line and does nothing else.
# Otherwise, as root with apt-get, it installs what is missing (apt-get update first)
# and starts the engine -- with systemd when the machine runs it, else `dockerd`
# in its own session (setsid + nohup, output to $CORRAL_LOG_DIR/dockerd.log, so it
# never holds the caller's stdout) -- and waits up to CORRAL_DOCKER_WAIT seconds
# (default 60) for the engine. When it started dockerd itself it writes the pid
# to $CORRAL_LOG_DIR/dockerd.pid (so that .ci/run can stop it at the end).
#
# Without root or apt-get, on a developer machine, it prints one line and exits 0:
# the tests that need Docker then skip with a clear reason. Under CI (CI=true) any
# failure to get a working engine and client exits 1.
#
# Environment (the last three exist for tests/unit/test_ensure_docker.py):
#   CORRAL_LOG_DIR            logs and dockerd.pid      (default /tmp/corral-logs)
#   CORRAL_DOCKER_WAIT        seconds to wait           (default 60)
#   CORRAL_DOCKER_PKG_CLIENT  docker.io's client        (default /usr/bin/docker)
#   DOCKER_PIDFILE            dockerd's pid file        (default /var/run/docker.pid)
#   CORRAL_SYSTEMD_DIR        systemd's runtime marker  (default /run/systemd/system)
set -euo pipefail

LOG_DIR="${CORRAL_LOG_DIR:-/tmp/corral-logs}"
WAIT="${CORRAL_DOCKER_WAIT:-60}"
PKG_CLIENT="${CORRAL_DOCKER_PKG_CLIENT:-/usr/bin/docker}"
PIDFILE="${DOCKER_PIDFILE:-/var/run/docker.pid}"
SYSTEMD_DIR="${CORRAL_SYSTEMD_DIR:-/run/systemd/system}"
mkdir -p "$LOG_DIR"

say() { echo "ensure-docker: $*"; }
in_ci() {
	case "${CI:-}" in
	1 | true | TRUE | True | yes) return 0 ;;
	esac
	return 1
}
give_up() {
	if in_ci; then
		say "$1" >&2
		exit 1
	fi
	say "$1; tests that need Docker will skip"
	exit 0
}
is_root() { [[ "$(id -u)" == "0" ]]; }
have() { command -v "$1" >/dev/null 2>&1; }

# answers [CLIENT]: does an engine answer through CLIENT (default: `docker` on PATH)?
answers() {
	local client="${1:-docker}"
	have "$client" || [[ -x "$client" ]] || return 1
	timeout 20 "$client" info >/dev/null 2>&1
}
# engine_answers: through the client on PATH, or through docker.io's own client
# (so that waiting for a fresh engine does not depend on a foreign client).
engine_answers() { answers docker || answers "$PKG_CLIENT"; }
describe() { # "PATH (client V)" of a client
	local v
	v="$(timeout 10 "$1" version --format '{{.Client.Version}}' 2>/dev/null || true)"
	echo "$(command -v "$1" 2>/dev/null || echo "$1") (client ${v:-of unknown version})"
}
server_version() {
	local client=docker
	answers docker || client="$PKG_CLIENT"
	timeout 20 "$client" version --format '{{.Server.Version}}' 2>/dev/null || echo "?"
}
have_busybox_static() {
	if have dpkg-query; then
		dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
	else
		have busybox
	fi
}

did=()

# 1. Packages, from what each step needs.
missing=()
if ! answers docker; then
	# No engine answers through the client on PATH. The engine is what matters:
	# without dockerd, docker.io is needed whatever client is on PATH.
	if ! have dockerd; then
		missing+=(docker.io)
	elif ! have docker; then
		missing+=(docker.io) # an engine without any client on PATH
	fi
fi
have_busybox_static || missing+=(busybox-static)
if ((${#missing[@]})); then
	if is_root && have apt-get; then
		apt_log="$LOG_DIR/apt.log"
		if ! {
			apt-get update &&
				DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
		} >"$apt_log" 2>&1; then
			tail -n 30 "$apt_log" >&2 || true
			give_up "apt-get install ${missing[*]} failed (log: $apt_log)"
		fi
		did+=("installed ${missing[*]}")
	elif [[ " ${missing[*]} " == *" docker.io "* ]]; then
		if ! is_root; then
			give_up "no Docker engine answers and dockerd is not installed; this is not root, so docker.io cannot be installed here (apt-get install docker.io busybox-static)"
		fi
		give_up "no Docker engine answers and dockerd is not installed; apt-get is missing, so docker.io cannot be installed here"
	else
		say "note: busybox-static is missing and cannot be installed here (not root with apt-get); the test image needs it"
	fi
fi

# 2. The engine.
if ! engine_answers; then
	is_root || give_up "no Docker engine answers and this is not root, so dockerd cannot be started here"
	have dockerd || give_up "no Docker engine answers and dockerd is still not installed (apt-get install docker.io)"

	dockerd_pid() {
		# The pid of a live dockerd from its pid file, if any.
		local pid
		pid="$(cat "$PIDFILE" 2>/dev/null || true)"
		[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
	}

	started_pid=""
	if [[ -d "$SYSTEMD_DIR" ]] && have systemctl &&
		systemctl start docker.service >>"$LOG_DIR/dockerd.log" 2>&1; then
		did+=("started docker.service with systemd")
	elif [[ -n "$(dockerd_pid || true)" ]]; then
		did+=("waited for the dockerd already starting (pid $(dockerd_pid || true))")
	else
		log="$LOG_DIR/dockerd.log"
		# setsid: own session, no controlling terminal, not in the caller's process
		# group; stdin/stdout/stderr never point at the caller's, and every other
		# inherited descriptor (a CI runner's pipes, say) is closed first.
		(
			for fd in /proc/"$BASHPID"/fd/*; do
				fd="${fd##*/}"
				if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then eval "exec $fd>&-"; fi
			done
			exec setsid nohup dockerd >>"$log" 2>&1 </dev/null
		) &
		started_pid=$!
		did+=("started dockerd (pid $started_pid, log $log)")
	fi

	deadline=$((SECONDS + WAIT))
	until engine_answers; do
		if [[ -n "$started_pid" ]] && ! kill -0 "$started_pid" 2>/dev/null; then
			tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
			give_up "dockerd exited before answering (log: $LOG_DIR/dockerd.log)"
		fi
		if ((SECONDS >= deadline)); then
			tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
			give_up "no Docker engine answers after ${WAIT}s (log: $LOG_DIR/dockerd.log)"
		fi
		sleep 0.5
	done
	if [[ -n "$started_pid" ]]; then
		echo "$started_pid" >"$LOG_DIR/dockerd.pid"
	fi
fi

# 3. The client the scripts call must talk to this engine.
if ! answers docker; then
	if ! have docker; then
		give_up "the Docker engine answers, but there is no docker client on PATH (docker.io installs $PKG_CLIENT)"
	fi
	give_up "the Docker engine $(server_version) answers through $PKG_CLIENT, but not through the docker on PATH, $(describe docker); put $(dirname "$PKG_CLIENT") before $(dirname "$(command -v docker)") on PATH"
fi

if ((${#did[@]})); then
	joined="$(printf '%s; ' "${did[@]}")"
	say "${joined%; }; Docker engine $(server_version) answers through $(describe docker)"
else
	say "Docker engine $(server_version) already answers through $(describe docker); nothing to do"
fi
