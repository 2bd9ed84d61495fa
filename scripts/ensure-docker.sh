#!/usr/bin/env bash
# Make a Docker engine answer on this machine, when that is possible.
#
# Idempotent: when `docker info` already answers and busybox-static is there,
# it prints one line and does nothing else.
# Otherwise, as root with apt-get: installs docker.io and busybox-static
# (apt-get update first), then starts the engine -- with systemd when the
# machine runs it, else `dockerd` in its own session (setsid + nohup, output to
# $CORRAL_LOG_DIR/dockerd.log, so that it never holds the caller's stdout) --
# and waits up to CORRAL_DOCKER_WAIT seconds (default 60) for `docker info`.
# When it started dockerd itself it writes its pid to $CORRAL_LOG_DIR/dockerd.pid
# (so that .ci/run can stop it at the end).
#
# Without root or apt-get, on a developer machine, it prints one line and exits 0:
# the tests that need Docker then skip with a clear reason. Under CI (CI=true)
# any failure to get an engine exits non-zero.
set -euo pipefail

LOG_DIR="${CORRAL_LOG_DIR:-/tmp/corral-logs}"
WAIT="${CORRAL_DOCKER_WAIT:-60}"
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
answers() { timeout 20 docker info >/dev/null 2>&1; }
server_version() { timeout 20 docker version --format '{{.Server.Version}}' 2>/dev/null || echo "?"; }
is_root() { [[ "$(id -u)" == "0" ]]; }
have_busybox_static() {
	if command -v dpkg-query >/dev/null 2>&1; then
		dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
	else
		command -v busybox >/dev/null 2>&1
	fi
}

did=()

# 1. Packages.
missing=()
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
have_busybox_static || missing+=(busybox-static)
if ((${#missing[@]})); then
	if is_root && command -v apt-get >/dev/null 2>&1; then
		apt_log="$LOG_DIR/apt.log"
		if ! {
			apt-get update &&
				DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
		} >"$apt_log" 2>&1; then
			tail -n 30 "$apt_log" >&2 || true
			give_up "apt-get install ${missing[*]} failed (log: $apt_log)"
		fi
		did+=("installed ${missing[*]}")
	elif ! command -v docker >/dev/null 2>&1; then
		give_up "Docker is not installed and this is not root with apt-get (install docker.io and busybox-static)"
	else
		say "note: busybox-static is missing and cannot be installed here (not root with apt-get); the test image needs it"
	fi
fi

# 2. The engine.
if answers; then
	if ((${#did[@]})); then
		say "${did[*]}; Docker engine $(server_version) answers"
	else
		say "Docker engine $(server_version) already answers; nothing to do"
	fi
	exit 0
fi

is_root || give_up "no Docker engine answers and this is not root, so dockerd cannot be started here"
command -v dockerd >/dev/null 2>&1 || give_up "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"

dockerd_pid() {
	# The pid of a live dockerd from its pid file, if any.
	local pid
	pid="$(cat "${DOCKER_PIDFILE:-/var/run/docker.pid}" 2>/dev/null || true)"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

started_pid=""
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1 &&
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
until answers; do
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
say "${did[*]}; Docker engine $(server_version) answers"
