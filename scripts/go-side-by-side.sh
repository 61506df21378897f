#!/bin/sh
# Go's own context benchmarks beside their port (benches/go_suite.rs), on this machine.
#
# Installs Debian's Go toolchain if `go` is missing, runs `go test -bench . -benchmem` in
# $(go env GOROOT)/src/context (one round before the port and the rest after it, so both
# sides see the same stretch of machine load), runs `cargo bench --bench go_suite`, and
# replaces the generated Go section of BENCHMARKS.md (scripts/go-table.py) with one table:
# Debian Go ns/op, B/op, allocs/op, cancelctx ns/op, ratio, and the Go 1.26 figures of
# scripts/go-1.26-figures.tsv. A floor row (the busy loop of CommonParentCancel alone) is
# run on both sides.
#
#   scripts/go-side-by-side.sh                           # ~6 min on 2 cores
#   CANCELCTX_BENCH_QUICK=1 scripts/go-side-by-side.sh   # ~2 min: short Go and criterion runs
#   GO_COUNT=5 GO_BENCHTIME=2s scripts/go-side-by-side.sh
#
# Outputs (go.txt, criterion/, load samples) stay in target/go-side-by-side/.
set -eu
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1; then
    echo "go-side-by-side: installing Debian's golang-go" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo apt-get install -y golang-go
fi

out=target/go-side-by-side
rm -rf "$out"
mkdir -p "$out"
quick=""
[ -n "${CANCELCTX_BENCH_QUICK:-}" ] && [ "${CANCELCTX_BENCH_QUICK}" != 0 ] && quick=1
count=${GO_COUNT:-3}
benchtime=${GO_BENCHTIME:-$([ -n "$quick" ] && echo 200ms || echo 1s)}
[ "$count" -ge 1 ] || { echo "GO_COUNT must be at least 1" >&2; exit 2; }
gomaxprocs=${GOMAXPROCS:-$(nproc)}
export GOMAXPROCS=$gomaxprocs

# Go's package directory; if testing it in place fails (a read-only GOROOT without a usable
# build cache, say), the benchmark file alone is tested from a scratch module: it is an
# external test package (`package context_test`) importing the standard `context`.
goroot=$(go env GOROOT)
godir="$goroot/src/context"
[ -f "$godir/benchmark_test.go" ] || { echo "no $godir/benchmark_test.go" >&2; exit 1; }
if ! (cd "$godir" && go test -run '^$' -bench 'ErrNoSuchBenchmark' . >/dev/null 2>&1); then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cp "$godir/benchmark_test.go" "$scratch/"
    (cd "$scratch" && go mod init gocontextbench >/dev/null 2>&1)
    godir=$scratch
fi

# A floor Go's file lacks: BenchmarkCommonParentCancel's busy loop (200 dependent integer
# divisions) alone, so that the context's share of that figure can be read off on both sides
# (the port has the same floor).
floordir=$(mktemp -d)
cat > "$floordir/floor_test.go" <<'GO'
package floor_test

import "testing"

func BenchmarkCommonParentCancelFloorBusyWorkOnly(b *testing.B) {
	b.RunParallel(func(pb *testing.PB) {
		x := 0
		for pb.Next() {
			for i := 0; i < 100; i++ {
				x /= x + 1
			}
			for i := 0; i < 100; i++ {
				x /= x + 1
			}
		}
	})
}
GO
(cd "$floordir" && go mod init gofloorbench >/dev/null 2>&1)

cargo bench --bench go_suite --no-run --quiet

dirty=""
git diff --quiet HEAD -- src benches Cargo.toml 2>/dev/null \
    || dirty=" (with uncommitted changes to src/, benches/ or Cargo.toml)"
{
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$dirty"
    echo "mode: $([ -n "$quick" ] && echo quick || echo full)"
    echo "start: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "go: $(go version | cut -d' ' -f3)"
    echo "gomaxprocs: $gomaxprocs"
    echo "go_args: -count $count -benchtime $benchtime"
    echo "rustc: $(rustc --version | cut -d' ' -f1-2)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
} > "$out/info.txt"

sampler=""
sample() { (while sleep 5; do cut -d' ' -f1 /proc/loadavg >> "$1"; done) & sampler=$!; }
stop_sampler() { [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true; sampler=""; }
trap 'stop_sampler; rm -rf "$floordir"; [ -z "${scratch:-}" ] || rm -rf "$scratch"' EXIT INT TERM

run_go() {
    sample "$out/load-go.txt"
    (cd "$godir" && go test -run '^$' -bench . -benchmem -count "$1" -benchtime "$benchtime") \
        | tee "$out/go-round.txt"
    (cd "$floordir" && go test -run '^$' -bench . -benchmem -count "$1" -benchtime "$benchtime") \
        | tee "$out/go-floor.txt"
    stop_sampler
    grep -q '^PASS' "$out/go-round.txt" || { echo "go test failed" >&2; exit 1; }
    grep -q '^PASS' "$out/go-floor.txt" || { echo "go test (floor) failed" >&2; exit 1; }
    cat "$out/go-round.txt" "$out/go-floor.txt" >> "$out/go.txt"
}

run_go 1
sample "$out/load-rust.txt"
CRITERION_HOME="$PWD/$out/criterion" cargo bench --bench go_suite
stop_sampler
[ "$count" -le 1 ] || run_go $((count - 1))

python3 scripts/go-table.py --dir "$out" --update BENCHMARKS.md
echo "go-side-by-side: BENCHMARKS.md updated"
