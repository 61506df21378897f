#!/bin/sh
# Runs every bench target, records the commit and the machine load during the run, then
# regenerates the results section of BENCHMARKS.md.
#
#   scripts/run-benches.sh                          # full run (~10 min on 2 cores)
#   CANCELCTX_BENCH_QUICK=1 scripts/run-benches.sh  # quick run (< 2 min)
#   scripts/run-benches.sh --bench ops              # extra arguments go to `cargo bench`
#
# Other processes on the machine distort the results (two-thread and wake-up cases most):
# the load samples end up in the Machine section so that a reader can judge.
set -eu
cd "$(dirname "$0")/.."
dir=target/criterion
mkdir -p "$dir"
cargo bench --no-run --quiet
dirty=""
git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || dirty=" (with uncommitted changes to src/ or Cargo.toml)"
{
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$dirty"
    echo "mode: $([ -n "${CANCELCTX_BENCH_QUICK:-}" ] && echo quick || echo full)"
    echo "start: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
} > "$dir/run-info.txt"
: > "$dir/load-samples.txt"
(while sleep 5; do cut -d' ' -f1 /proc/loadavg >> "$dir/load-samples.txt"; done) &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT INT TERM
start=$(date +%s)
cargo bench "$@"
echo "duration: $(( $(date +%s) - start )) s" >> "$dir/run-info.txt"
kill $sampler 2>/dev/null || true
python3 scripts/bench-table.py --update BENCHMARKS.md
