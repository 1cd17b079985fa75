#!/usr/bin/env bash
# scripts/ablate.sh: where the receiver's CPU goes, found by switching its
# parts off one after another (README, Performance). It copies HEAD into a
# temporary directory, applies scripts/ablation.patch there (switches read
# from ABL_* variables; they are never in the service), builds it, and runs
# the load test for each variant against the bare baseline.
#
#   scripts/ablate.sh                  RUNS=2 runs of every variant, N=5000 deliveries, ROUNDS=3
#   CACHEGRIND=1 scripts/ablate.sh     instructions per delivery instead (valgrind; repeats exactly)
#
# With CACHEGRIND=1 each server runs under valgrind for N=1000 and N=3000
# deliveries; the difference over 2,000 is one delivery, without start-up.
# Takes 10 to 20 minutes either way.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-2} n=${N:-5000} rounds=${ROUNDS:-3}
patch=$PWD/scripts/ablation.patch

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive HEAD | tar -x -C "$work"
(cd "$work" && git apply "$patch")
(cd "$work" && go build -o bin/receiver . && go build -o bin/loadtest ./cmd/loadtest)

names=("receiver" "no result decode" "+ no summary line" "+ no verification, no dedupe" "+ no answer body, no body decode")
switches=(
	""
	"ABL_NODECODE=1"
	"ABL_NODECODE=1 ABL_NOSUMMARY=1"
	"ABL_NODECODE=1 ABL_NOSUMMARY=1 ABL_NOVERIFY=1 ABL_NODEDUPE=1"
	"ABL_NODECODE=1 ABL_NOSUMMARY=1 ABL_NOVERIFY=1 ABL_NODEDUPE=1 ABL_NOANSWER=1 ABL_NOREQJSON=1"
)

if [ -z "${CACHEGRIND:-}" ]; then
	printf '%-32s %s\n' variant "receiver/baseline throughput (median of rounds, each run); CPU per delivery, receiver vs baseline"
	for i in "${!names[@]}"; do
		line=""
		read -ra switch <<<"${switches[$i]}"
		for _ in $(seq "$runs"); do
			out=$(env "${switch[@]}" "$work/bin/loadtest" -receiver "$work/bin/receiver" -n "$n" -c 64 -rounds "$rounds")
			ratio=$(sed -n 's/^receiver\/baseline throughput: \([0-9.]*x\).*/\1/p' <<<"$out")
			cpu=$(awk '$1 == "receiver" || $1 == "baseline" { printf "%s%s", sep, $(NF-1); sep = " vs " }' <<<"$out")
			line+="  $ratio ($cpu µs)"
		done
		printf '%-32s%s\n' "${names[$i]}" "$line"
	done
	exit 0
fi

command -v valgrind >/dev/null || { echo "ablate: CACHEGRIND=1 needs valgrind (Debian: valgrind)" >&2; exit 1; }
# The load test starts "the receiver" through this wrapper, which runs the
# receiver or the baseline (CG_TARGET) under cachegrind.
cat >"$work/cg.sh" <<EOF
#!/usr/bin/env bash
if [ "\$CG_TARGET" = baseline ]; then set -- "$work/bin/loadtest" -serve-baseline; else set -- "$work/bin/receiver"; fi
exec valgrind -q --tool=cachegrind --cache-sim=no --cachegrind-out-file="\$CG_OUT" "\$@"
EOF
chmod +x "$work/cg.sh"
perDelivery() { # target, switches: instructions for one delivery
	local switch
	read -ra switch <<<"$2"
	for count in 1000 3000; do
		env "${switch[@]}" CG_TARGET="$1" CG_OUT="$work/cg.$count" GODEBUG=asyncpreemptoff=1 \
			"$work/bin/loadtest" -receiver "$work/cg.sh" -n $count -c 64 -rounds 1 >/dev/null
	done
	echo $((($(sed -n 's/^summary: //p' "$work/cg.3000") - $(sed -n 's/^summary: //p' "$work/cg.1000")) / 2000))
}
base=$(perDelivery baseline "")
printf '%-32s %9s instructions per delivery\n' baseline "$base"
for i in "${!names[@]}"; do
	count=$(perDelivery receiver "${switches[$i]}")
	printf '%-32s %9s (%s x the baseline)\n' "${names[$i]}" "$count" "$(awk -v a="$count" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
done
