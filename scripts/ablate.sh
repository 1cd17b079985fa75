#!/usr/bin/env bash
# scripts/ablate.sh: where the receiver's CPU goes, found by switching its
# parts off one after another (README, Performance). It copies REV (HEAD by
# default) into a temporary directory, applies scripts/ablation.patch there
# (switches read from ABL_* variables; they are never in the service), builds
# it, and runs the load test for each variant against the bare baseline.
#
#   scripts/ablate.sh                  RUNS=2 load tests of every variant, N=5000 deliveries, ROUNDS=3
#   CACHEGRIND=1 scripts/ablate.sh     instructions per delivery instead (valgrind), RUNS=1 of each
#   REV=5fcc8fa scripts/ablate.sh      another version (the patch must apply to it)
#   RECEIVER_ONLY=1 scripts/ablate.sh  the baseline and the receiver alone, without the patch's
#                                      switches: for a version they no longer apply to
# GODEBUG=cpu.rdtscp=off keeps the Go runtime off RDTSCP, which valgrind 3.19
# cannot run.
#
# With CACHEGRIND=1 each server runs under valgrind for N=1000 and N=3000
# deliveries; the difference over 2,000 is one delivery, without start-up.
# The garbage collector's timing still moves a count by a few thousand, so
# run it more than once (RUNS=3) before reading a difference under 10,000.
# Takes a few minutes to a quarter of an hour, with the machine's load.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true # bash 4.4 and later: a failed run inside $(...) stops the script
cd "$(dirname "$0")/.."
rev=${REV:-HEAD} n=${N:-5000} rounds=${ROUNDS:-3}
patch=$PWD/scripts/ablation.patch

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive "$rev" | tar -x -C "$work"
if [ -n "${RECEIVER_ONLY:-}" ]; then # only the load test's part: it passes the switches on
	(cd "$work" && git apply --include='cmd/loadtest/*' "$patch")
else
	(cd "$work" && git apply "$patch")
fi
(cd "$work" && go build -o bin/receiver . && go build -o bin/loadtest ./cmd/loadtest)

names=(
	"receiver"
	"no result decode"
	"+ no summary line"
	"+ no verification, no dedupe"
	"+ no answer body, no body decode"
	"+ no connection limiter"
	"+ no server timeouts"
	"+ no delivery deadline"
	"+ the baseline's API transport"
)
all="ABL_NODECODE=1 ABL_NOSUMMARY=1 ABL_NOVERIFY=1 ABL_NODEDUPE=1 ABL_NOANSWER=1 ABL_NOREQJSON=1"
switches=(
	""
	"ABL_NODECODE=1"
	"ABL_NODECODE=1 ABL_NOSUMMARY=1"
	"ABL_NODECODE=1 ABL_NOSUMMARY=1 ABL_NOVERIFY=1 ABL_NODEDUPE=1"
	"$all"
	"$all ABL_NOLIMITER=1"
	"$all ABL_NOLIMITER=1 ABL_NOTIMEOUTS=1"
	"$all ABL_NOLIMITER=1 ABL_NOTIMEOUTS=1 ABL_NODEADLINE=1"
	"$all ABL_NOLIMITER=1 ABL_NOTIMEOUTS=1 ABL_NODEADLINE=1 ABL_PLAINTRANSPORT=1"
)
if [ -n "${RECEIVER_ONLY:-}" ]; then
	names=("receiver") switches=("")
fi

if [ -z "${CACHEGRIND:-}" ]; then
	runs=${RUNS:-2}
	echo "$rev: receiver/baseline throughput (median of rounds) and CPU per delivery (receiver vs baseline), each run"
	for i in "${!names[@]}"; do
		read -ra switch <<<"${switches[$i]}"
		line=""
		for _ in $(seq "$runs"); do
			out=$(env ${switch[@]+"${switch[@]}"} "$work/bin/loadtest" -receiver "$work/bin/receiver" -n "$n" -c 64 -rounds "$rounds")
			ratio=$(sed -n 's/^receiver\/baseline throughput: \([0-9.]*x\).*/\1/p' <<<"$out")
			cpu=$(awk '$1 == "receiver" || $1 == "baseline" { printf "%s%s", sep, $(NF-1); sep = " vs " }' <<<"$out")
			line+="  $ratio ($cpu µs)"
		done
		printf '%-34s%s\n' "${names[$i]}" "$line"
	done
	exit 0
fi

runs=${RUNS:-1}
command -v valgrind >/dev/null || { echo "ablate: CACHEGRIND=1 needs valgrind (Debian: valgrind)" >&2; exit 1; }
# The load test starts "the receiver" through this wrapper, which runs the
# receiver or the baseline (CG_TARGET) under cachegrind. valgrind's own
# messages go to a file, the server's to the load test.
cat >"$work/cg.sh" <<EOF
#!/usr/bin/env bash
if [ "\$CG_TARGET" = baseline ]; then set -- "$work/bin/loadtest" -serve-baseline; else set -- "$work/bin/receiver"; fi
exec valgrind --tool=cachegrind --cache-sim=no --log-file="\$CG_OUT.log" --cachegrind-out-file="\$CG_OUT" "\$@"
EOF
chmod +x "$work/cg.sh"
perDelivery() { # target, switches: instructions for one delivery
	local switch count
	read -ra switch <<<"$2"
	for count in 1000 3000; do
		rm -f "$work/cg.$count"
		env ${switch[@]+"${switch[@]}"} CG_TARGET="$1" CG_OUT="$work/cg.$count" GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off \
			"$work/bin/loadtest" -receiver "$work/cg.sh" -n $count -c 64 -rounds 1 >/dev/null
	done
	echo $((($(sed -n 's/^summary: //p' "$work/cg.3000") - $(sed -n 's/^summary: //p' "$work/cg.1000")) / 2000))
}
echo "$rev: instructions per delivery, each run, and the first run's ratio to the baseline's first"
base=""
row() { # name, target, switches: its runs, and the first run's ratio to the baseline's
	local line="" first="" count
	for _ in $(seq "$runs"); do
		count=$(perDelivery "$2" "$3")
		line+="  $count"
		first=${first:-$count}
	done
	base=${base:-$first} # the first row is the baseline
	printf '%-34s%s  (%s x)\n' "$1" "$line" "$(awk -v a="$first" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
}
row baseline baseline ""
for i in "${!names[@]}"; do
	row "${names[$i]}" receiver "${switches[$i]}"
done
