#!/usr/bin/env bash
# Runs the VTS suite in one kernel lane: `debian` (Debian's own kernel, binder module, no dmem;
# the system heap uncharged by the kernel, so the service enforces), `debian-memacct` (the same
# kernel booted with dma_heap.mem_accounting=1: the kernel charges the system heap to memcg),
# `dmem` (a kernel built from Debian's source with the dmem controller and a CMA heap charged to
# it), or `selinux` (Debian's kernel with SELinux the active LSM, permissive, and the small policy
# in lane/selinux/: every process in an Android domain). Needs the static binaries from
# build-guest.sh in BIN_DIR. Exits with the guest suite's status; fails loudly when the lane
# cannot run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
lane=${1:?usage: run-lane.sh debian|debian-memacct|dmem|selinux}
bin_dir=${BIN_DIR:?BIN_DIR must point at the static guest binaries}
share=${LANE_DIR:-$root/target/lane/$lane}
rm -rf "$share"
mkdir -p "$share/bin" "$share/out"
cp "$bin_dir"/chargetransferd "$bin_dir"/chargectl "$bin_dir"/chargetransfer-vts "$bin_dir"/rsb_hub \
    "$bin_dir"/ct-c-allocator "$share/bin/"
cp "$here/guest/run-suite.sh" "$here/guest/services.sh" "$share/"
cp "$root/config/policy.json" "$share/policy.json"
cp "$here/guest/policy-vts.json" "$share/policy-vts.json"
cp "$here/guest/policy-trace.json" "$share/policy-trace.json"

# shellcheck source=vts/lane/lib.sh
. "$here/lane/lib.sh"
"$here/lane/host-deps.sh" >&2
case $lane in
    debian | debian-memacct)
        ct_debian_kernel || { echo "run-lane: FAIL: no Debian kernel" >&2; exit 1; }
        kernel_args=(--kernel "$KERNEL" --modules "$MODULES")
        append=""
        [ "$lane" = debian-memacct ] && append="dma_heap.mem_accounting=1"
        ;;
    selinux)
        ct_debian_kernel || { echo "run-lane: FAIL: no Debian kernel" >&2; exit 1; }
        kernel_args=(--kernel "$KERNEL" --modules "$MODULES")
        # Debian lists AppArmor before SELinux in CONFIG_LSM; this list makes SELinux the one
        # that labels tasks (binder delivers only its contexts).
        append="lsm=landlock,lockdown,yama,loadpin,safesetid,integrity,selinux,bpf enforcing=0"
        "$here/lane/host-deps.sh" checkpolicy >&2
        # Version 33: the newest Debian 12's checkpolicy writes; the kernel reads it.
        checkpolicy -M -U allow -c 33 -o "$share/selinux.policy" "$here/lane/selinux/policy.conf" >&2
        selinux_policy=/share/selinux.policy
        # The lane plays a platform that made SurfaceFlinger a client (as the demo phone does):
        # the shipped policy trusts only what vendor policy can make one.
        cp "$here/lane/selinux/platform-clients.json" "$share/policy-platform.json"
        service_policies="--policy /share/policy-platform.json"
        ;;
    dmem)
        built=$("$here/kernel/build.sh")
        BZIMAGE=$(sed -n 's/^BZIMAGE=//p' <<<"$built" | tail -n 1)
        VRAMSIM_KO=$(sed -n 's/^VRAMSIM_KO=//p' <<<"$built" | tail -n 1)
        [ -n "$BZIMAGE" ] && [ -n "$VRAMSIM_KO" ] || { echo "run-lane: FAIL: the dmem kernel did not build" >&2; exit 1; }
        # The simulated-VRAM test device, loaded by run-suite.sh before the service starts.
        cp "$VRAMSIM_KO" "$share/vramsim.ko"
        vramsim_module=/share/vramsim.ko
        kernel_args=(--kernel "$BZIMAGE")
        append="cma=64M"
        ;;
    *) echo "run-lane: unknown lane $lane" >&2; exit 2 ;;
esac
cat >"$share/lane.env" <<ENV
LANE=$lane
SERVICE_ARGS="--policy /share/policy.json --policy /share/policy-vts.json ${service_policies:-}"
TRACE_ARGS="--policy /share/policy-trace.json"
VTS_ARGS="--lane $lane"
SELINUX_POLICY=${selinux_policy:-}
VRAMSIM_MODULE=${vramsim_module:-}
ENV
# One vCPU: under TCG, the kernel's int3-based code patching (static keys flipped when the first
# memcg child appears) raced with the other vCPU and oopsed in kmem_cache_alloc once; with one
# vCPU there is no cross-CPU patching to race.
"$here/lane/run-guest.sh" "${kernel_args[@]}" --append "$append" --timeout "${LANE_TIMEOUT:-900}" \
    --mem 2G --smp 1 --share "$share" --script run-suite.sh
