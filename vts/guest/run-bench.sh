#!/bin/sh
# Runs inside a lane guest (busybox sh) for vts/benchmarks.sh: starts the service manager and the
# service on the kernel binder driver, times the service's own code (`--accountant-cycles`),
# times binder calls with `chargectl bench` on an empty ledger and again under perf (the
# service's CPU samples with their call graphs, for vts/profile.awk on the host), then runs
# `chargetransfer-vts --bench` (holder processes with real dma-bufs, the
# service's per-app usage vs a /proc scan, the service's RSS, and `chargectl bench` again under
# that load), then `chargetransfer-vts --calls-bench` (each caller's methods against a null call,
# 1-8 concurrent clients, at two ledger sizes; with strace in /share/strace, the service's system
# calls per method). Raw outputs land in /share/out/*.txt. Settings come from /share/lane.env.
set -u
# shellcheck source=/dev/null # written by vts/benchmarks.sh
. /share/lane.env
export PATH="/share/bin:$PATH" RUST_LOG="${RUST_LOG:-warn}"
out=/share/out
mkdir -p "$out" /data/vendor/chargetransfer
uname -r >"$out/guest-kernel.txt"
echo "== bench: the service's own code, $BENCH_CYCLES cycles"
chargetransfer-vts --accountant-cycles "$BENCH_CYCLES" >"$out/cycles-guest.txt" 2>&1 || { cat "$out/cycles-guest.txt"; exit 1; }
cat "$out/cycles-guest.txt"
# shellcheck source=vts/guest/services.sh
. /share/services.sh
# shellcheck disable=SC2086 # SERVICE_ARGS is a word list
start_services "$out" --state-dir /data/vendor/chargetransfer --reconcile-secs 0 $SERVICE_ARGS || exit 1

echo "== bench: chargectl bench, empty ledger"
chargectl bench --iterations "$BENCH_CALLS" >"$out/chargectl-empty.txt" 2>&1
rc=$?
cat "$out/chargectl-empty.txt"
[ $rc -eq 0 ] || exit $rc

echo "== bench: the service's CPU per call, sampled by perf"
cat /proc/kallsyms >"$out/kallsyms.txt"
# DWARF call graphs: the service is built without frame pointers. Recorded in the guest's RAM.
/share/perf/run record -q -m 1024 -F "$BENCH_PROFILE_HZ" --call-graph dwarf,16384 -p "$service_pid" \
    -o /tmp/service.perf -- chargectl bench --iterations "$BENCH_CALLS" >"$out/chargectl-profiled.txt" 2>&1
rc=$?
cat "$out/chargectl-profiled.txt"
[ $rc -eq 0 ] || exit $rc
cp /tmp/service.perf "$out/service.perf"
printf 'result profile_hz %s\nresult profile_iterations %s\n' "$BENCH_PROFILE_HZ" "$BENCH_CALLS" >"$out/profile-run.txt"

echo "== bench: $BENCH_PROCS holders x $BENCH_BUFS dma-bufs"
chargetransfer-vts --bench --procs "$BENCH_PROCS" --bufs "$BENCH_BUFS" --calls "$BENCH_CALLS" \
    --scans "$BENCH_SCANS" --chargectl /share/bin/chargectl >"$out/vts-bench.txt" 2>&1
rc=$?
cat "$out/vts-bench.txt"
[ $rc -eq 0 ] || exit $rc

echo "== bench: full-device view, BPF iterators vs procfs"
chargetransfer-vts --scan-bench --procs "$BENCH_PROCS" --levels 1000,10000,100000 --scans 3 --other-fds 1000:10000 >"$out/scan-bench.txt" 2>&1
rc=$?
cat "$out/scan-bench.txt"
echo "== bench: callers, concurrency and the service's system calls per method"
trace=""
[ -x /share/strace/run ] && trace="--strace /share/strace/run"
# shellcheck disable=SC2086 # trace is a word list
chargetransfer-vts --calls-bench --live "$BENCH_LIVE" --clients "$BENCH_CLIENTS" --iters "$BENCH_ITERS" \
    --holders "$BENCH_PROCS" --out "$out" $trace >"$out/calls-bench.txt" 2>&1
rc2=$?
cat "$out/calls-bench.txt"
[ $rc -eq 0 ] && rc=$rc2
echo "== bench: service log (tail)"
tail -n 5 "$out/service.log"
exit $rc
