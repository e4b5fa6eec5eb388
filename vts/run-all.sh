#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: the formatting and lint gates, unit,
# fixture and host-IPC tiers with cargo, then the VTS suite in the kernel lanes (Debian's kernel,
# with and without mem_accounting, and with SELinux; the dmem kernel). Any tier that cannot run
# fails the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
log_dir="$root/target/test-logs"
# Every build here is built once: incremental state would only take disk.
export CARGO_INCREMENTAL=0
mkdir -p "$log_dir"

echo "== gates: cargo fmt --check, clippy -D warnings (bpfmt -l: in tests/android_files.rs)"
vts/lane/host-deps.sh blueprint-tools
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (unit, fixture, host RPC tier, Android build files)"
# The build first: the C ABI's host test links the static archive (vts/cabi), which only a build makes.
cargo build --workspace --locked
cargo test --workspace --locked 2>&1 | tee "$log_dir/cargo-test.log"

echo "== static guest binaries"
BIN_DIR=$(vts/build-guest.sh | sed -n 's/^BIN_DIR=//p')
[ -n "$BIN_DIR" ] || { echo "run-all: FAIL: build-guest.sh named no BIN_DIR"; exit 1; }
export BIN_DIR

declare -A passed failed skipped
total_pass=0 total_fail=0 total_skip=0
for lane in debian debian-memacct dmem selinux; do
    echo "== kernel lane: $lane"
    set +e
    vts/run-lane.sh "$lane" 2>&1 | tee "$log_dir/lane-$lane.log"
    rc=${PIPESTATUS[0]}
    set -e
    line=$(grep -a -E '^vts: [0-9]+ passed, [0-9]+ failed' "$log_dir/lane-$lane.log" | tail -n 1 || true)
    if [ -z "$line" ]; then
        echo "run-all: FAIL: lane $lane produced no VTS result (exit $rc)"
        passed[$lane]=0 failed[$lane]=1 skipped[$lane]=0
    else
        passed[$lane]=$(echo "$line" | sed -E 's/^vts: ([0-9]+) passed.*/\1/')
        failed[$lane]=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
        skipped[$lane]=$(echo "$line" | sed -n -E 's/.* ([0-9]+) skipped.*/\1/p')
        skipped[$lane]=${skipped[$lane]:-0}
        if [ "$rc" -ne 0 ] && [ "${failed[$lane]}" -eq 0 ]; then failed[$lane]=1; fi
    fi
    total_pass=$((total_pass + passed[$lane])) total_fail=$((total_fail + failed[$lane]))
    total_skip=$((total_skip + skipped[$lane]))
done
for lane in debian debian-memacct dmem selinux; do
    echo "lane $lane: VTS ${passed[$lane]} passed, ${failed[$lane]} failed, ${skipped[$lane]} skipped"
done
echo "run-all: $(( $(date +%s) - start )) s"
echo "lanes: $total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" -eq 0 ]
