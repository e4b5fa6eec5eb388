#!/bin/sh
# Runs inside a lane guest (busybox sh): starts the service manager and the service on the kernel
# binder driver, runs the VTS binary as root (it spawns app/allocator clients as other uids),
# then shows what the service and the kernel report. Settings come from /share/lane.env.
set -u
. /share/lane.env
export PATH=/share/bin:$PATH RUST_LOG=${RUST_LOG:-info}
out=/share/out
mkdir -p "$out" /data/vendor/chargetransfer
# Background daemons must not hold the console: their output goes to files.
rsb_hub --insecure-allow-all >"$out/hub.log" 2>&1 &
sleep 1
# shellcheck disable=SC2086 # SERVICE_ARGS is a word list
chargetransferd --state-dir /data/vendor/chargetransfer --reconcile-secs 0 $SERVICE_ARGS >"$out/service.log" 2>&1 &
echo "== lane $LANE: VTS"
chargetransfer-vts $VTS_ARGS >"$out/vts.log" 2>&1
rc=$?
cat "$out/vts.log"
chargectl probe >"$out/probe.json" 2>&1
echo "== lane $LANE: chargectl regions"
chargectl regions 2>&1
echo "== lane $LANE: chargectl bench"
chargectl bench --iterations "${BENCH_ITERATIONS:-300}" 2>&1
echo "== lane $LANE: service log (tail)"
tail -n 20 "$out/service.log"
exit $rc
