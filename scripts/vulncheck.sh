#!/usr/bin/env bash
# make vulncheck: govulncheck over ./..., with the local Go toolchain.
#
#   scripts/vulncheck.sh golang.org/x/vuln/cmd/govulncheck@VERSION
#
# The vulnerability database is the Go module golang.org/x/vulndb as the Go
# module proxy serves it (its data/osv holds the entries that vuln.go.dev
# publishes), so this needs the module proxy, not vuln.go.dev. VULNDB set to
# a govulncheck -db URL, such as VULNDB=https://vuln.go.dev, uses that instead.
#
# govulncheck exits 3 when the code calls a known vulnerability. One in the
# standard library belongs to the local Go toolchain and is fixed by a newer
# Go patch, not by this repository: it is printed and does not fail. One in a
# module the project requires fails (exit 1), as does any other error.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 golang.org/x/vuln/cmd/govulncheck@VERSION" >&2
	exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

db=${VULNDB:-}
if [ -z "$db" ]; then
	# About 25 MB to download, 67 MB unpacked, for each new version.
	vulndb=$(go list -m -f '{{.Version}}' golang.org/x/vulndb@latest)
	go mod download golang.org/x/vulndb@"$vulndb"
	db=file://$(go list -m -f '{{.Dir}}' golang.org/x/vulndb@"$vulndb")/data/osv
	# A pseudo-version names its commit's time: v0.0.0-20261105234957-e22db6528018.
	day=$(sed -E 's/^v0\.0\.0-([0-9]{4})([0-9]{2})([0-9]{2}).*/\1-\2-\3/' <<<"$vulndb")
	echo "vulnerability database: golang.org/x/vulndb@$vulndb (committed $day), from the Go module proxy"
fi

# Installed rather than go run, which turns govulncheck's exit status 3 into 1.
GOBIN=$tmp go install "$1"
echo "$1, $(go env GOVERSION): govulncheck ./..."
# With the go command of the toolchain in use first on PATH, as go run would
# put it: when GOTOOLCHAIN names another release (GOTOOLCHAIN=go1.27.3), the
# go found on PATH switches to it, but govulncheck then fails to type-check
# that release's standard library ("requires go1.27 or later").
status=0
PATH="$(go env GOROOT)/bin:$PATH" "$tmp/govulncheck" -db "$db" ./... | tee "$tmp/out" || status=$?
case $status in
0) exit 0 ;;
3) ;;
*) exit "$status" ;;
esac

# Each vulnerability called is listed under "Module: PATH", or under
# "Standard library".
modules=$(sed -n 's/^  Module: /  /p' "$tmp/out" | sort -u)
if [ -n "$modules" ]; then
	echo
	echo "vulncheck: FAIL: the code calls known vulnerabilities of these modules (upgrade them to the 'Fixed in' versions above):"
	echo "$modules"
	exit 1
fi
echo
echo "vulncheck: the calls listed are into the standard library of $(go env GOVERSION), the Go toolchain in use: a newer Go patch fixes them (see 'Fixed in'). Reported, not failed."
