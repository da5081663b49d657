#!/usr/bin/env bash
# A CPU flame graph of the release sniroute (forwarding: splice) under the
# connection-rate load of benches/e2e.rs (32 connect/hello/answer/close loops
# from the load-generator process).
#
#   benches/flamegraph.sh OUT.svg
#
# `perf record` (call graph: $SNIROUTE_PERF_CALL_GRAPH, default `dwarf`)
# follows only the sniroute process, during the timed window
# (SNIROUTE_BENCH_SECS, default 5 s; the bench's SNIROUTE_BENCH_PERF_DATA
# hook starts and stops it). inferno renders the SVG; install it once with
# `cargo install inferno --locked` (a tool, not a dependency). Needs perf and
# permission to profile another process (root, or kernel.perf_event_paranoid
# <= 1). SNIROUTE_FLAMEGRAPH_FOLDED=PATH also keeps the folded stacks.
set -euo pipefail

if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: $0 OUT.svg" >&2
    exit 2
fi
out=$(realpath -m -- "$1")
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    if ! command -v "$tool" >/dev/null; then
        echo "$0: $tool not found (perf: the linux-perf package; inferno: cargo install inferno --locked)" >&2
        exit 1
    fi
done
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

cd -- "$root"
export SNIROUTE_PERF_CALL_GRAPH=${SNIROUTE_PERF_CALL_GRAPH:-dwarf}
SNIROUTE_BENCH_SECS=${SNIROUTE_BENCH_SECS:-5} \
    SNIROUTE_BENCH_REPS=1 \
    SNIROUTE_BENCH_CANDIDATES=splice \
    SNIROUTE_BENCH_PERF_DATA="$tmp/perf.data" \
    cargo bench --bench e2e -- connrate
if [[ ! -s $tmp/perf.data ]]; then
    echo "$0: perf recorded nothing (see the bench's output above)" >&2
    exit 1
fi
perf script -i "$tmp/perf.data" 2>/dev/null | inferno-collapse-perf >"$tmp/folded"
if [[ -n ${SNIROUTE_FLAMEGRAPH_FOLDED:-} ]]; then
    cp -- "$tmp/folded" "$SNIROUTE_FLAMEGRAPH_FOLDED"
fi
rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo '?')
inferno-flamegraph \
    --title "sniroute (splice), connection-rate load, git $rev" \
    --subtitle "perf record ($SNIROUTE_PERF_CALL_GRAPH call graph) of the sniroute process only; $(date -u '+%Y-%m-%d %H:%M UTC')" \
    <"$tmp/folded" >"$out"
echo "flame graph written to $out"
