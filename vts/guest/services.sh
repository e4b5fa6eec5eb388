# Sourced by the guest scripts (busybox sh): starts the service manager and the service on the
# kernel binder driver and waits for each the way a supervisor would, never for a fixed time:
# the hub until it says it is the context manager, the service until it answers a call.

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds.
wait_until() {
    tries=$(($1 * 10))
    what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || { echo "$what did not come up"; return 1; }
        sleep 0.1
    done
}

# in_domain DOMAIN COMMAND...: execs COMMAND, in the SELinux domain u:r:DOMAIN:s0 where the lane
# loaded a policy (selinux_loaded set; the context applies at exec). Run it in a subshell.
in_domain() {
    if [ -n "${selinux_loaded:-}" ]; then
        printf 'u:r:%s:s0' "$1" >/proc/self/attr/exec || exit 1
    fi
    shift
    exec "$@"
}

# start_services OUT SERVICE_ARGS...: logs go to OUT/hub.log and OUT/service.log; sets
# service_pid. Fails (with the log's tail) when either does not come up within 30 s.
start_services() {
    out_dir=$1
    shift
    # Background daemons must not hold the console: their output goes to files.
    (RUST_LOG=info in_domain servicemanager rsb_hub --insecure-allow-all) >"$out_dir/hub.log" 2>&1 &
    wait_until 30 "the service manager" grep -q "serving on" "$out_dir/hub.log" || {
        tail -n 20 "$out_dir/hub.log"
        return 1
    }
    (in_domain hal_vendor_chargetransfer_default chargetransferd "$@") >"$out_dir/service.log" 2>&1 &
    service_pid=$!
    chargectl --wait 30 version >/dev/null 2>&1 || {
        echo "the service did not come up"
        tail -n 20 "$out_dir/service.log"
        return 1
    }
}
