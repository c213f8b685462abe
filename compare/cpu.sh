#!/usr/bin/env bash
# Throughput and CPU of two `mixbus` builds in alternating runs of one case: each run's
# msgs/s and `cpu_s` (the process's CPU time), then the medians and the median of the
# per-run ratios (B ÷ A). The CPU ratio tells small changes apart on a noisy machine better
# than the throughput does.
#
# Usage: compare/cpu.sh ROUNDS WORKLOAD SIZE COUNT SUBSCRIBERS A_MIXBUS B_MIXBUS [ENV=VALUE]
#   ENV=VALUE is set for B's runs only (a throwaway build reading a setting from it).
#   XA="--memory" (in the environment) adds arguments to both builds' `mixbus bench`.
# Example: compare/cpu.sh 8 pubsub 16 2000000 1 /tmp/basetarget/release/mixbus target/release/mixbus
set -euo pipefail
R=${1:?rounds}; W=${2:?workload}; S=${3:?size}; N=${4:?count}; K=${5:?subscribers}
A=${6:?A mixbus}; B=${7:?B mixbus}; EB=${8:-MIXBUS_CPU_SH=1}
XA=${XA:-}
run() { # binary [env] -> "msgs_per_sec cpu_s"
  local bin=$1; shift
  # shellcheck disable=SC2086
  env "$@" "$bin" bench $XA --workload "$W" --size "$S" --count "$N" --subscribers "$K" --json --quiet 2>/dev/null |
    grep -o '"msgs_per_sec":[0-9.]*\|"cpu_s":[0-9.]*' | cut -d: -f2 | tr '\n' ' '
}
for _ in $(seq "$R"); do
  echo "$(run "$A" MIXBUS_CPU_SH=1) $(run "$B" "$EB")"
done | python3 -c '
import sys, statistics as s
rows = [list(map(float, l.split())) for l in sys.stdin if len(l.split()) == 4]
for r in rows:
    print("  A %.0f msgs/s %.3f s | B %.0f msgs/s %.3f s" % tuple(r))
m = lambda i: s.median(r[i] for r in rows)
print("median A %.0f msgs/s cpu %.3f s | B %.0f msgs/s cpu %.3f s | B/A throughput %.3f, cpu %.3f (%d runs each)" % (
    m(0), m(1), m(2), m(3), s.median(r[2] / r[0] for r in rows), s.median(r[3] / r[1] for r in rows), len(rows)))'
