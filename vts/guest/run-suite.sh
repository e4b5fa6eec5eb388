#!/bin/sh
# Runs inside a lane guest (busybox sh): starts the service manager and the service on the kernel
# binder driver, runs the VTS binary as root (it spawns app/allocator clients as other uids),
# then shows what the service and the kernel report. Then, in the lanes named by FAULT_LANES
# (default: debian, where the service alone accounts the system heap), the fault phase: the
# suite's service is stopped and the VTS binary supervises its own, killing it FAULT_KILLS (100)
# times under load. Settings come from /share/lane.env. Exits non-zero if anything failed.
set -u
. /share/lane.env
# Binaries run from tmpfs: the fault phase starts the service and the clients hundreds of times,
# and each exec over 9p (cache=none) reads the whole binary through the emulated virtio queue.
mkdir -p /tmp/bin
cp /share/bin/* /tmp/bin/
export PATH=/tmp/bin:$PATH RUST_LOG=${RUST_LOG:-info}
out=/share/out
mkdir -p "$out" /data/vendor/chargetransfer
service_args="--state-dir /data/vendor/chargetransfer --reconcile-secs 0 $SERVICE_ARGS"
# The selinux lane: selinuxfs and the policy before any binder process starts (rsbinder asks the
# driver for callers' contexts only where /sys/fs/selinux/enforce exists, and the driver takes a
# process's context from the credentials it opened the device with). start_services then runs the
# hub and the service in their domains.
if [ -n "${SELINUX_POLICY:-}" ]; then
    mkdir -p /sys/fs/selinux
    mount -t selinuxfs selinuxfs /sys/fs/selinux && cat "$SELINUX_POLICY" >/sys/fs/selinux/load || {
        echo "lane: FAIL: cannot load the SELinux policy"
        exit 1
    }
    echo "lane: selinux policy loaded, enforce=$(cat /sys/fs/selinux/enforce), init runs as $(cat /proc/self/attr/current)"
    selinux_loaded=1
fi
# tracefs before the service starts: it opens trace_marker at start (TRACE_ARGS turns the trace
# counters on); the VTS reads the events back from the `trace` file.
[ -e /sys/kernel/tracing/trace_marker ] || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# The dmem lane's simulated VRAM (vts/kernel/vramsim): its region must exist before the service
# probes the regions. /dev/vramsim is opened by the apps' clients too (restore in their context).
if [ -n "${VRAMSIM_MODULE:-}" ]; then
    insmod "$VRAMSIM_MODULE" size_mb="${VRAMSIM_MB:-4096}" || {
        echo "lane: FAIL: insmod $VRAMSIM_MODULE"
        exit 1
    }
    # Loaded after guest-init made the other heaps world-usable: the same for this one (apps
    # allocate from it themselves).
    chmod 0666 /dev/vramsim /dev/dma_heap/vramsim
    echo "lane: vramsim loaded: $(head -n 1 /dev/vramsim)"
fi
# shellcheck source=vts/guest/services.sh
. /share/services.sh
# The suite's service has the trace counters on (TRACE_ARGS: policy-trace.json) for the VTS to
# read back; the timed phases below run the service as shipped (counters off).
# shellcheck disable=SC2086 # service_args is a word list
start_services "$out" $service_args ${TRACE_ARGS:-} || exit 1
echo "== lane $LANE: VTS"
chargetransfer-vts $VTS_ARGS >"$out/vts.log" 2>&1
rc=$?
if [ -n "${selinux_loaded:-}" ]; then
    echo "== lane $LANE: SELinux contexts of the service and the service manager"
    for p in /proc/[0-9]*; do
        case $(cat "$p/comm" 2>/dev/null) in
            chargetransferd | rsb_hub) echo "$(cat "$p/comm") pid ${p#/proc/}: $(cat "$p/attr/current")" ;;
        esac
    done
fi
cat "$out/vts.log"
chargectl probe >"$out/probe.json" 2>&1
echo "== lane $LANE: chargectl regions"
chargectl regions 2>&1
if [ -n "${VRAMSIM_MODULE:-}" ]; then
    echo "== lane $LANE: autoconfig report (dry run) and the vram device"
    chargectl autoconfig --dry-run 2>&1
    cat /dev/vramsim
fi
echo "== lane $LANE: chargectl bench"
chargectl bench --iterations "${BENCH_ITERATIONS:-300}" 2>&1
echo "== lane $LANE: service log (tail)"
tail -n 20 "$out/service.log"

case " ${FAULT_LANES:-debian} " in *" $LANE "*) faults=${FAULT_KILLS:-100} ;; *) faults=0 ;; esac
if [ "$faults" -gt 0 ]; then
    echo "== lane $LANE: fault injection"
    # Only one service may be registered: the fault phase starts (and kills) its own.
    kill "$service_pid"
    wait "$service_pid"
    echo "== lane $LANE: allocator outage"
    # shellcheck disable=SC2086 # VTS_ARGS is a word list
    CT_SERVICE_ARGS=$service_args chargetransfer-vts --allocator-outage $VTS_ARGS \
        --service-log "$out/allocator-service.log" >"$out/allocator.log" 2>&1
    arc=$?
    cat "$out/allocator.log"
    [ "$arc" -ne 0 ] && [ "$rc" -eq 0 ] && rc=1
    # shellcheck disable=SC2086 # VTS_ARGS is a word list
    CT_SERVICE_ARGS=$service_args chargetransfer-vts --faults $VTS_ARGS --kills "$faults" \
        ${FAULT_SEED:+--seed "$FAULT_SEED"} --service-log "$out/faults-service.log" >"$out/faults.log" 2>&1
    frc=$?
    cat "$out/faults.log"
    if [ "$frc" -ne 0 ]; then
        echo "== lane $LANE: fault service log (tail)"
        tail -n 40 "$out/faults-service.log"
        [ "$rc" -eq 0 ] && rc=1
    fi
fi
exit $rc
