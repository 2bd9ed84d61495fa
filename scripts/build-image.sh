#!/usr/bin/env bash
# Build the test image corral-busybox:latest without any registry.
#
# Why: tests and the demo need a real container image, but no registry can be
# reached from CI. Debian's busybox-static is one static binary that gives us a
# shell, httpd, wget, nc, sleep...; we lay it out as a tiny rootfs and
# `docker import` it.
#
# Idempotent and fast: the image carries the label corral.build-hash, a hash of
# this script and of the busybox binary; when the existing image has the same
# hash, nothing is rebuilt.
#
# Environment:
#   IMAGE    image to build      (default corral-busybox:latest)
#   BUSYBOX  static busybox path (default: the first static one of /bin/busybox and PATH)
#   FORCE=1  rebuild even when up to date
#
# This script installs nothing: CI installs busybox-static and docker.io first.
set -euo pipefail

IMAGE="${IMAGE:-corral-busybox:latest}"
SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"

die() {
	echo "build-image: $*" >&2
	exit 1
}

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (apt-get install docker.io)"

# A slow or absent engine must not hang CI: bound the probe.
if ! timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
	die "no Docker engine answers (is dockerd running? try: nohup dockerd >/tmp/dockerd.log 2>&1 &)"
fi

is_static() { ! LC_ALL=C grep -aq 'ld-linux' <(head -c 4096 "$1"); }

BUSYBOX="${BUSYBOX:-}"
if [[ -z "$BUSYBOX" ]]; then
	# The first static busybox among /bin/busybox and those on PATH: Debian's
	# `busybox` package is dynamically linked and would not run in an empty rootfs.
	while IFS= read -r candidate; do
		if [[ -x "$candidate" ]] && is_static "$(readlink -f "$candidate")"; then
			BUSYBOX="$candidate"
			break
		fi
	done < <(
		echo /bin/busybox
		type -ap busybox || true
	)
	[[ -n "$BUSYBOX" ]] || die "no static busybox found (apt-get install busybox-static)"
fi
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX is not an executable (apt-get install busybox-static)"
BUSYBOX="$(readlink -f "$BUSYBOX")"

# A dynamically linked busybox would not run in an empty rootfs: refuse it
# with a clear message rather than producing an image whose /bin/sh fails.
is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked; install Debian's busybox-static"

BUILD_HASH="$(cat "$SCRIPT_PATH" "$BUSYBOX" | sha256sum | cut -c1-16)"

if [[ "${FORCE:-0}" != "1" ]]; then
	current="$(docker image inspect --format '{{ index .Config.Labels "corral.build-hash" }}' "$IMAGE" 2>/dev/null || true)"
	if [[ "$current" == "$BUILD_HASH" ]]; then
		echo "build-image: $IMAGE is up to date (build hash $BUILD_HASH)"
		exit 0
	fi
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/corral-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT

mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,www,root,proc,sys,dev,var/tmp}
chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"
chmod 0700 "$ROOTFS/root"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
chmod 0755 "$ROOTFS/bin/busybox"

# One symlink per applet, all in /bin (on PATH in the image), like
# `busybox --install -s /bin` would do inside the image.
while IFS= read -r applet; do
	[[ -z "$applet" || "$applet" == "busybox" ]] && continue
	ln -sf busybox "$ROOTFS/bin/$applet"
done < <("$ROOTFS/bin/busybox" --list)

cat >"$ROOTFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOTFS/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
cat >"$ROOTFS/etc/hosts" <<'EOF'
127.0.0.1 localhost
EOF
echo 'corral-busybox' >"$ROOTFS/www/index.html"

tar --numeric-owner --owner=0 --group=0 -C "$ROOTFS" -cf - . |
	docker import \
		--change 'CMD ["/bin/sh"]' \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'WORKDIR /' \
		--change "LABEL corral.build-hash=$BUILD_HASH" \
		- "$IMAGE" >/dev/null

# Smoke test: the shell and an applet run in a container.
if ! out="$(timeout 60 docker run --rm --network none "$IMAGE" /bin/sh -c 'echo ok-$(id -u)')" || [[ "$out" != "ok-0" ]]; then
	die "built $IMAGE but a container from it does not run (/bin/sh said: ${out:-nothing})"
fi

echo "build-image: built $IMAGE (build hash $BUILD_HASH)"
