#!/usr/bin/env bash
# Throughput of two `mixbus` builds and of NATS's official client, case by case, in
# alternating rounds, as BENCHMARKS.md reports them: medians, and the median of the
# per-round ratios (the machine's load moves all three together within a round).
#
# Usage: compare/ab.sh ROUNDS OLD_MIXBUS NEW_MIXBUS [NATS_ADDR]
#   OLD_MIXBUS, NEW_MIXBUS: paths to `mixbus` binaries (a worktree of the old commit built
#   with its own CARGO_TARGET_DIR gives the old one).
#   NATS_ADDR: a running nats-server (`nats-server -a 127.0.0.1 -p 14222`); leave it out to
#   compare the two builds only. compare/nats-official is built on first use.
# NATS_BIN=compare/nats-go/nats-go picks NATS's Go client instead (see compare/nats-go).
# CASES="pubsub:16:1 group:256:2" picks the cases (workload:size:subscribers).
set -euo pipefail
ROUNDS=${1:?rounds}; OLD=${2:?old mixbus}; NEW=${3:?new mixbus}; NATS_ADDR=${4:-}
CASES=${CASES:-"pubsub:16:1 pubsub:256:1 pubsub:4096:1 fanout:256:4 fanout:4096:4 group:256:2"}
HERE=$(cd "$(dirname "$0")" && pwd)
NATS_BIN=${NATS_BIN:-$HERE/nats-official/target/release/nats-official}
if [ -n "$NATS_ADDR" ] && [ ! -x "$NATS_BIN" ]; then
  cargo build --release --manifest-path "$HERE/nats-official/Cargo.toml" >&2
fi

# Messages per run: fewer for large payloads and for fan-out (every delivery counts).
count() {
  local w=$1 s=$2
  if [ "$s" -ge 4096 ]; then echo 300000; elif [ "$w" = fanout ]; then echo 1000000; else echo 2000000; fi
}
bus() { # binary workload size count subscribers -> msgs/s
  "$1" bench --workload "$2" --size "$3" --count "$4" --subscribers "$5" --json --quiet 2>/dev/null |
    grep -o '"msgs_per_sec":[0-9.]*' | cut -d: -f2
}
nats() { # workload size count subscribers -> msgs/s
  "$NATS_BIN" "$NATS_ADDR" "$1" "$2" "$3" "$4" 2>/dev/null | grep -o '[0-9]* msgs/s' | cut -d' ' -f1
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A O N X
for _ in $(seq "$ROUNDS"); do
  for c in $CASES; do
    IFS=: read -r w s k <<<"$c"
    n=$(count "$w" "$s")
    O[$c]+="$(bus "$OLD" "$w" "$s" "$n" "$k") "
    N[$c]+="$(bus "$NEW" "$w" "$s" "$n" "$k") "
    if [ -n "$NATS_ADDR" ]; then X[$c]+="$(nats "$w" "$s" "$n" "$k") "; fi
  done
done

printf '%-14s %12s %12s %8s' case old new new/old
[ -n "$NATS_ADDR" ] && printf ' %12s %9s' nats new/nats
echo
for c in $CASES; do
  o=$(echo "${O[$c]}" | median); n=$(echo "${N[$c]}" | median)
  r=$(paste -d' ' <(echo "${N[$c]}" | tr ' ' '\n' | grep .) <(echo "${O[$c]}" | tr ' ' '\n' | grep .) |
    awk '{print $1/$2}' | tr '\n' ' ' | median)
  printf '%-14s %12.0f %12.0f %8.2f' "$c" "$o" "$n" "$r"
  if [ -n "$NATS_ADDR" ]; then
    x=$(echo "${X[$c]}" | median)
    rx=$(paste -d' ' <(echo "${N[$c]}" | tr ' ' '\n' | grep .) <(echo "${X[$c]}" | tr ' ' '\n' | grep .) |
      awk '{print $1/$2}' | tr '\n' ' ' | median)
    printf ' %12.0f %9.2f' "$x" "$rx"
  fi
  echo
done
