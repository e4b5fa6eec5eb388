#!/usr/bin/env bash
# Runs the VTS suite in one kernel lane: `run-lane.sh debian` (Debian's own kernel, binder
# module, no dmem) or `run-lane.sh dmem` (kernel built from Debian's source with the dmem
# controller and a CMA heap charged to it). Needs the static binaries from build-guest.sh in
# BIN_DIR. Exits with the guest suite's status; fails loudly when the lane cannot run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
lane=${1:?usage: run-lane.sh debian|dmem}
bin_dir=${BIN_DIR:?BIN_DIR must point at the static guest binaries}
share=${LANE_DIR:-$root/target/lane/$lane}
rm -rf "$share"
mkdir -p "$share/bin" "$share/out"
cp "$bin_dir"/chargetransferd "$bin_dir"/chargectl "$bin_dir"/chargetransfer-vts "$bin_dir"/rsb_hub "$share/bin/"
cp "$here/guest/run-suite.sh" "$share/"
cp "$root/config/policy.json" "$share/policy.json"
cp "$here/guest/policy-vts.json" "$share/policy-vts.json"

"$here/lane/host-deps.sh" >&2
case $lane in
    debian)
        eval "$("$here/lane/debian-kernel.sh" | grep -E '^(KERNEL|MODULES|ABI)=')"
        kernel_args=(--kernel "$KERNEL" --modules "$MODULES")
        append="dma_heap.mem_accounting=1"
        ;;
    dmem)
        BZIMAGE=$("$here/kernel/build.sh" | sed -n 's/^BZIMAGE=//p' | tail -n 1)
        [ -n "$BZIMAGE" ] || { echo "run-lane: FAIL: the dmem kernel did not build" >&2; exit 1; }
        kernel_args=(--kernel "$BZIMAGE")
        append="cma=64M dma_heap.mem_accounting=1"
        ;;
    *) echo "run-lane: unknown lane $lane" >&2; exit 2 ;;
esac
cat >"$share/lane.env" <<ENV
LANE=$lane
SERVICE_ARGS="--policy /share/policy.json --policy /share/policy-vts.json"
VTS_ARGS="--lane $lane"
ENV
"$here/lane/run-guest.sh" "${kernel_args[@]}" --append "$append" --timeout "${LANE_TIMEOUT:-900}" \
    --mem 2G --share "$share" --script run-suite.sh
