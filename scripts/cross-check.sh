#!/usr/bin/env bash
# make cross-check: proves that the receiver cross-builds for linux/arm64 as a
# static binary (what the multi-arch image's builder stage does), and, where
# qemu-aarch64-static is installed (Debian: qemu-user-static), that the arm64
# binary starts, answers /healthz 200 and passes its own -healthcheck.
#
#   scripts/cross-check.sh BINARY    (make cross-check builds BINARY first)
#
# Every wait is bounded; the receiver it starts is always stopped. With CI=true
# a missing qemu-aarch64-static is a failure, not a skip.
set -euo pipefail

bin=${1:?usage: $0 path/to/linux-arm64-binary}
[ -f "$bin" ] || { echo "cross-check: $bin does not exist" >&2; exit 1; }

# 1. A 64-bit little-endian AArch64 ELF executable with no interpreter and no
# dynamic section: it runs on distroless/static, which has no libc.
command -v readelf >/dev/null || { echo "cross-check: needs readelf (Debian: binutils)" >&2; exit 1; }
header=$(readelf -h "$bin")
for want in 'Class: *ELF64' 'little endian' 'Type: *EXEC' 'Machine: *AArch64'; do
	if ! grep -Eq "$want" <<<"$header"; then
		echo "cross-check: $bin is not a linux/arm64 executable (no '$want'):" >&2
		echo "$header" >&2
		exit 1
	fi
done
segments=$(readelf -lW "$bin")
if grep -Eq '^ *(INTERP|DYNAMIC) ' <<<"$segments"; then
	echo "cross-check: $bin is dynamically linked:" >&2
	echo "$segments" >&2
	exit 1
fi
echo "cross-check: $bin is a static linux/arm64 ELF executable"

# 2. Run it under user-mode emulation.
qemu=$(command -v qemu-aarch64-static || true)
if [ -z "$qemu" ]; then
	if [ "${CI:-}" = true ]; then
		echo "cross-check: CI must run the arm64 binary, but qemu-aarch64-static is missing (apt-get install qemu-user-static)" >&2
		exit 1
	fi
	echo "cross-check: SKIP running it: qemu-aarch64-static is not installed (Debian: apt-get install qemu-user-static)"
	exit 0
fi

log=$(mktemp)
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		# The receiver drains for at most 15 s; do not wait longer than that.
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$log"
}
trap cleanup EXIT

# A throwaway configuration: Svix's published test secret, a dummy key, an API
# URL that is never called (only /healthz is probed), and PORT=0: the kernel
# picks a free port, which the "listening" log line names.
env -i PATH="$PATH" \
	WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
	OPTIPICK_API_KEY=cross-check \
	OPTIPICK_API_URL=http://127.0.0.1:9 \
	PORT=0 LOG_FORMAT=json \
	"$qemu" "$bin" >"$log" 2>&1 &
pid=$!

port=
for _ in $(seq 1 150); do # 30 s at most
	port=$(sed -nE 's/.*"msg":"listening".*"addr":"[^"]*:([0-9]+)".*/\1/p' "$log" | head -n 1)
	[ -n "$port" ] && break
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "cross-check: the arm64 receiver exited before listening:" >&2
		cat "$log" >&2
		exit 1
	fi
	sleep 0.2
done
if [ -z "$port" ]; then
	echo "cross-check: the arm64 receiver did not log \"listening\" within 30 s:" >&2
	cat "$log" >&2
	exit 1
fi
echo "cross-check: the arm64 receiver (under $qemu) listens on port $port"

# Its own probe, also arm64 under qemu: GET 127.0.0.1:$port/healthz, exit 0 on 200.
if ! env -i PATH="$PATH" PORT="$port" timeout 30 "$qemu" "$bin" -healthcheck; then
	echo "cross-check: the arm64 -healthcheck of 127.0.0.1:$port/healthz failed; receiver log:" >&2
	cat "$log" >&2
	exit 1
fi
echo "cross-check: OK: the arm64 binary answers /healthz 200 under qemu"
