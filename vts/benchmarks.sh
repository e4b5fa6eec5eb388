#!/usr/bin/env bash
# Regenerates BENCHMARKS.md and benchmarks.svg, every number from one run:
#   ledger   cargo bench --bench ledger (short criterion settings; its summary block)
#   journal  cargo bench --bench journal (its one-run `journal:` lines)
#   rss      chargetransfer-vts --rss: an in-memory accountant with 100k synthetic buffers; and
#            --accountant-cycles: the service's own code per method on the host (the guest
#            runs it too), in a loop and right after a switch to another process
#   guest    one QEMU boot of Debian's kernel with real binder running vts/guest/run-bench.sh:
#            chargectl bench (null call vs charge/transfer/release/getProcessUsage), 200 holder
#            processes x 50 dma-bufs, getProcessUsage vs a full /proc scan, the service's RSS
#            and the full-device view by BPF iterators vs procfs at 1k/10k/100k buffers, then
#            chargetransfer-vts --calls-bench: each caller's methods (app, gralloc, compositor) vs
#            a null call, 1/2/4/8 concurrent clients, at 1k and 100k live buffers, and the
#            service's system calls per method (strace in the guest)
#   report   BENCHMARKS.md + benchmarks.svg from the raw outputs
# Usage: vts/benchmarks.sh [STEP...]   (default: all five, in that order; `report` alone
#        rewrites the files from the raw outputs of an earlier run)
# Env: BENCH_DIR (raw outputs, default target/bench), LANE_DIR (guest share dir, default
#      $BENCH_DIR/lane), BENCH_PROCS=200 BENCH_BUFS=50 BENCH_CALLS=400 BENCH_SCANS=5,
#      RSS_BUFFERS=100000 RSS_CGROUPS=1000, BENCH_LIVE=1000,100000 BENCH_CLIENTS=1,2,4,8
#      BENCH_ITERS=200, BENCH_CYCLES=2000, BENCH_PROFILE_HZ=999, LANE_TIMEOUT=3000.
# Takes 17-26 minutes warm, most of it the guest's benchmarks under TCG (builds are incremental).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
raw=${BENCH_DIR:-$root/target/bench}
share=${LANE_DIR:-$raw/lane}
procs=${BENCH_PROCS:-200} bufs=${BENCH_BUFS:-50} calls=${BENCH_CALLS:-400} scans=${BENCH_SCANS:-5}
live=${BENCH_LIVE:-1000,100000} clients=${BENCH_CLIENTS:-1,2,4,8} iters=${BENCH_ITERS:-200}
rss_buffers=${RSS_BUFFERS:-100000} rss_cgroups=${RSS_CGROUPS:-1000} cycles=${BENCH_CYCLES:-2000}
profile_hz=${BENCH_PROFILE_HZ:-999}
steps=("$@")
((${#steps[@]})) || steps=(ledger journal rss guest report)
# Criterion's own statistics are kept short: the report uses the benches' single-run lines.
criterion=(--warm-up-time 0.5 --measurement-time 1 --sample-size 10 --noplot)
mkdir -p "$raw"

log() { echo "benchmarks: $*" >&2; }
die() { echo "benchmarks: FAIL: $*" >&2; exit 1; }

bin_dir() {
    [[ -n ${BIN_DIR:-} ]] || BIN_DIR=$("$here/build-guest.sh" | sed -n 's/^BIN_DIR=//p' | tail -n 1)
    [[ -x $BIN_DIR/chargetransfer-vts ]] || die "build-guest.sh gave no BIN_DIR"
}

step_ledger() {
    log "cargo bench --bench ledger"
    (cd "$root" && cargo bench --bench ledger -- "${criterion[@]}") >"$raw/ledger.txt" 2>"$raw/ledger.err" ||
        die "ledger bench failed: see $raw/ledger.err"
}

step_journal() {
    log "cargo bench --bench journal"
    (cd "$root" && cargo bench --bench journal -- "${criterion[@]}") >"$raw/journal.txt" 2>"$raw/journal.err" ||
        die "journal bench failed: see $raw/journal.err"
}

step_rss() {
    bin_dir
    log "host RSS at $rss_buffers buffers"
    "$BIN_DIR/chargetransfer-vts" --rss "$rss_buffers" "$rss_cgroups" >"$raw/rss.txt"
    log "host: the service's own code, $cycles cycles"
    "$BIN_DIR/chargetransfer-vts" --accountant-cycles "$cycles" >"$raw/cycles-host.txt"
}

# guest_tool NAME BINARY: BINARY and its libraries in $share/NAME, started by $share/NAME/run.
guest_tool() {
    local dir=$share/$1
    mkdir -p "$dir"
    cp "$2" "$dir/"
    ldd "$2" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | xargs -I{} cp -L {} "$dir/"
    printf '#!/bin/sh\nexec /share/%s/%s --library-path /share/%s /share/%s/%s "$@"\n' "$1" \
        "$(basename "$(ldd "$2" | awk '$1 ~ /^\/.*ld-linux/ { print $1 }')")" "$1" "$1" "$(basename "$2")" >"$dir/run"
    chmod +x "$dir/run"
}

# The guest's perf samples of the service (DWARF call graphs), bucketed by vts/profile.awk.
profile() {
    [[ -s $share/out/service.perf ]] || die "the guest recorded no profile: see $raw/guest-console.txt"
    mkdir -p "$raw/symfs"
    ln -sfn "$share" "$raw/symfs/share"
    { perf script -i "$share/out/service.perf" --symfs "$raw/symfs" --kallsyms "$raw/kallsyms.txt" \
        -F comm,ip,sym,dso 2>/dev/null | awk -f "$here/profile.awk" && cat "$raw/profile-run.txt"; } >"$raw/profile.txt" ||
        die "perf script of the service's profile failed"
}

step_guest() {
    bin_dir
    rm -rf "$share"
    mkdir -p "$share/bin" "$share/out"
    cp "$BIN_DIR"/{chargetransferd,chargectl,chargetransfer-vts,rsb_hub} "$share/bin/"
    cp "$here/guest/run-bench.sh" "$here/guest/services.sh" "$share/"
    cp "$root/config/policy.json" "$share/policy.json"
    cp "$here/guest/policy-vts.json" "$share/policy-vts.json"
    cat >"$share/lane.env" <<ENV
LANE=debian
SERVICE_ARGS="--policy /share/policy.json --policy /share/policy-vts.json"
BENCH_PROCS=$procs
BENCH_BUFS=$bufs
BENCH_CALLS=$calls
BENCH_SCANS=$scans
BENCH_LIVE=$live
BENCH_CLIENTS=$clients
BENCH_ITERS=$iters
BENCH_CYCLES=$cycles
BENCH_PROFILE_HZ=$profile_hz
ENV
    "$here/lane/host-deps.sh" strace linux-perf >&2
    # strace for the syscall account and perf for the profile: Debian's binaries with their
    # libraries, run by their loader.
    guest_tool strace /usr/bin/strace
    guest_tool perf /usr/bin/perf
    # shellcheck source=vts/lane/lib.sh
    . "$here/lane/lib.sh"
    ct_debian_kernel || die "no Debian kernel"
    log "guest boot (TCG): $procs holders x $bufs dma-bufs"
    local rc=0
    "$here/lane/run-guest.sh" --kernel "$KERNEL" --modules "$MODULES" --timeout "${LANE_TIMEOUT:-3000}" \
        --mem 2G --share "$share" --script run-bench.sh >"$raw/guest-console.txt" || rc=$?
    cp "$share"/out/*.txt "$raw/" 2>/dev/null || true
    ((rc == 0)) || die "guest bench exited $rc: see $raw/guest-console.txt"
    profile
}

# ---------------------------------------------------------------- report

# `result KEY VALUE` lines.
val() { awk -v k="$2" '$1 == "result" && $2 == k { v = $3 } END { if (v == "") exit 1; print v }' "$raw/$1"; }
# A `journal: LABEL ...` line of the journal bench, without `journal: LABEL`.
jline() { grep -m1 "^journal: $1" "$raw/journal.txt" | sed "s/^journal: $1 *//"; }
# Integer nanoseconds as a readable duration.
dur() { awk -v n="$1" 'BEGIN { if (n >= 1e9) printf "%.2f s", n / 1e9; else if (n >= 1e6) printf "%.1f ms", n / 1e6; else if (n >= 1e3) printf "%.1f µs", n / 1e3; else printf "%d ns", n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { r = a / b; printf(r < 10 ? "%.1f" : "%.0f", r) }'; }
# Rust's Debug duration ("123.4µs", "1.2ms", "850ns", "1.5s") in nanoseconds.
to_ns() { awk -v d="$1" 'BEGIN { m = 1; if (d ~ /ns$/) m = 1; else if (d ~ /µs$/ || d ~ /us$/) m = 1e3; else if (d ~ /ms$/) m = 1e6; else if (d ~ /s$/) m = 1e9; gsub(/[^0-9.]/, "", d); printf "%.0f", d * m }'; }

# One `chargectl bench` output: rows of the binder table.
binder_rows() {
    local f=$raw/$1 null charge release usage transfer
    null=$(sed -n 's/.* null \([^,]*\), charge .*/\1/p' "$f" | head -1)
    charge=$(sed -n 's/.* charge \([^ ]*\) (.*/\1/p' "$f" | head -1)
    release=$(sed -n 's/.* release \([^ ]*\) (.*/\1/p' "$f" | head -1)
    usage=$(sed -n 's/.*getProcessUsage \([^ ]*\) (.*/\1/p' "$f" | head -1)
    transfer=$(sed -n 's/.*, transfer \([^ ]*\) (.*/\1/p' "$f" | head -1)
    [[ -n $null && -n $charge && -n $release && -n $usage ]] || die "$f: no chargectl bench lines"
    local n; n=$(to_ns "$null")
    printf '%s\t%s\n' null "$null" charge "$charge" transfer "${transfer:-}" release "$release" getProcessUsage "$usage" |
        while IFS=$'\t' read -r call d; do
            if [[ -z $d ]]; then
                printf '%s|n/a|n/a\n' "$call"
            else
                printf '%s|%s|%s\n' "$call" "$(dur "$(to_ns "$d")")" "$(awk -v a="$(to_ns "$d")" -v b="$n" 'BEGIN { printf "%.2f", a / b }')"
            fi
        done
}

# getProcessUsage's cost in null calls: empty ledger vs loaded, and what that means for the ratio.
usage_note() {
    local empty loaded null full
    empty=$(binder_rows chargectl-empty.txt | sed -n 's/^getProcessUsage|[^|]*|//p')
    loaded=$(binder_rows chargectl-loaded.txt | sed -n 's/^getProcessUsage|[^|]*|//p')
    null=$(val vts-bench.txt null_p50_ns) full=$(val vts-bench.txt full_scan_p50_ns)
    if awk -v e="$empty" -v l="$loaded" 'BEGIN { exit !(l > 3 * e) }'; then
        echo "The query's own cost grows with the ledger: \`getProcessUsage\` is $empty× a null call on an"
        echo "empty ledger but $loaded× at $(val vts-bench.txt ledger_buffers_after) live buffers (section 2), because"
        echo "\`Accountant::process_usage\` filters every live buffer by owner pid and builds a full record"
        echo "for each. At its empty-ledger cost the same scan would take ≈ $(awk -v f="$full" -v n="$null" -v e="$empty" 'BEGIN { printf "%.0f", f / (n * e) }')× as long as"
        echo "the query (a projection from this run's numbers, not a measurement)."
    else
        echo "The query costs about the same on an empty ledger ($empty× a null call) as at"
        echo "$(val vts-bench.txt ledger_buffers_after) live buffers ($loaded×): it does not scan the ledger."
    fi
}

# One table row per level of scan-bench.txt, and one for the level with other fds open.
scan_rows() {
    local level b p o
    for level in 1000 10000 100000; do
        b=$(val scan-bench.txt "scan_${level}_bpf_ns") || continue
        p=$(val scan-bench.txt "scan_${level}_procfs_ns")
        echo "| $(val scan-bench.txt "scan_${level}_buffers") | $(dur "$b") | $(dur "$p") | **$(ratio "$p" "$b")×** |"
        o=$(val scan-bench.txt "scan_${level}_other_fds") || continue
        b=$(val scan-bench.txt "scan_${level}_other_bpf_ns")
        p=$(val scan-bench.txt "scan_${level}_other_procfs_ns")
        echo "| $(val scan-bench.txt "scan_${level}_buffers") and $o other fds (/dev/null) | $(dur "$b") | $(dur "$p") | **$(ratio "$p" "$b")×** |"
    done
}

# Where the BPF view's time went at 10000 buffers (p50 of each part).
scan_phases() {
    local level=10000
    val scan-bench.txt "scan_${level}_bpf_merge_ns" >/dev/null || return 0
    k() { dur "$(val scan-bench.txt "scan_${level}_bpf_$1_ns")"; }
    echo "Where the BPF view's $(dur "$(val scan-bench.txt "scan_${level}_bpf_ns")") went at $level buffers: on one thread, iter/task_file"
    echo "read in $(k task_file) and iter/task in $(k task), then the holders sorted in $(k holders); beside it, iter/dmabuf read"
    echo "in $(k dmabuf), then the buffers listed by inode in $(k listing); then the two merged in $(k merge)."
}

# What each fd that is not a dma-buf adds to a scan, by backend (the other-fds row against its level's).
scan_per_fd() {
    local level=10000 o
    o=$(val scan-bench.txt "scan_${level}_other_fds") || return 0
    per() { awk -v a="$(val scan-bench.txt "scan_${level}_other_$1_ns")" -v b="$(val scan-bench.txt "scan_${level}_$1_ns")" -v n="$o" 'BEGIN { printf "%.0f", (a - b) / n }'; }
    echo "Each fd that is not a dma-buf adds $(dur "$(per bpf)") to the BPF view (iter/task_file still visits"
    echo "every open file; the program drops it after reading its superblock's magic) and $(dur "$(per procfs)") to the procfs"
    echo "scan (it opens and parses every fd's fdinfo): the BPF view's cost grows with buffers and holders,"
    echo "and $(ratio "$(per procfs)" "$(per bpf)")× less with every other fd on the device."
}

# The part of the guest's vts-bench.txt after its chargectl header is the loaded run.
split_loaded() {
    sed -n '/^bench: chargectl bench at/,$p' "$raw/vts-bench.txt" >"$raw/chargectl-loaded.txt"
}

# A `ledger: LABEL ...` summary line of the ledger bench, without `ledger: LABEL`.
lline() { grep -m1 "^ledger: $1" "$raw/ledger.txt" | sed "s/^ledger: $1 *//; s/ *$//"; }
# p50 (ns) of OP at BUFFERS x CGROUPS from the ledger bench's scale lines.
lp50() {
    sed -n "s/^ledger: at $2 buffers x $3 cgroups, p50\/p99 ns: //p" "$raw/ledger.txt" |
        tr ',' '\n' | sed -n "s/^ *$1 \([0-9]*\)\/.*/\1/p"
}

ledger_report() {
    local f=$raw/ledger.txt
    if ! grep -q '^ledger summary:' "$f" 2>/dev/null; then
        echo "_Not measured: \`benches/ledger.rs\` printed no summary (see \`target/bench/ledger.txt\`)._"
        return
    fi
    local op flat=() a b c d
    for op in charge transfer release; do
        a=$(lp50 $op 1000 1000) b=$(lp50 $op 1000000 1000) c=$(lp50 $op 100000 10) d=$(lp50 $op 100000 10000)
        flat+=("$op $a → $b ns ($(ratio "$b" "$a")×) from 1k to 1M buffers, $c → $d ns ($(ratio "$d" "$c")×) from 10 to 10k cgroups")
    done
    cat <<EOF
\`cargo bench --bench ledger\` (host, native, no I/O — the ledger is plain data): $(sed -n 's/^ledger summary: //p' "$f" | sed 's/ *$//').
Each operation is timed on its own, so the numbers include one \`Instant\` pair
($(lline 'timer overhead in each sample')). Charge and release are paired so the live set stays
constant; transfer moves a random live buffer to a random process.

| at 100k buffers × 1k cgroups | p50 | p99 |
|---|---:|---:|
| \`charge\` | $(lline 'charge p50') | $(lline 'charge p99') |
| \`transfer\` | $(lline 'transfer p50') | $(lline 'transfer p99') |
| \`release\` | $(lline 'release p50') | $(lline 'release p99') |

Bytes per live record: **$(lline 'bytes per live record')**. Targets: p99 < 1 µs
$(lline 'target p99 < 1 µs at 100k x 1k'); ≤ 128 bytes per record $(lline 'target <= 128 bytes per record').

Latency vs scale (p50 / p99, ns; the plot above):

| live buffers | cgroups | charge | transfer | release |
|---:|---:|---:|---:|---:|
EOF
    sed -nE 's/^ledger: at ([0-9]+) buffers x ([0-9]+) cgroups, p50\/p99 ns: charge ([0-9/]+), transfer ([0-9/]+), release ([0-9/]+).*/| \1 | \2 | \3 | \4 | \5 |/p' "$f"
    echo
    echo "While the ledger grows a thousandfold in either direction, the p50 of each op grows by a"
    echo "small factor, not with the size:"
    echo
    printf -- '- %s\n' "${flat[@]}"
    echo
    echo "Every op and size, p99: $(lline 'p99 across 1k..1M buffers and 10..10k cgroups' | sed 's/ (every.*//'). Each op is a hash"
    echo "lookup of the buffer plus a walk up the owner's cgroup path; what grows is the cost of reaching"
    echo "records in a larger, colder table."
}

# ---------------------------------------------------------------- callers (calls-bench.txt)

# A `result` value of the callers benchmark, empty when absent.
cv() { val calls-bench.txt "$1" 2>/dev/null || true; }
# The live-buffer levels the callers benchmark ran at (`result live_<level> <n>`).
levels() { sed -n 's/^result live_\([0-9]*\) .*/\1/p' "$raw/calls-bench.txt"; }
# p50 ratio of METHOD to the same client's null call: `ratio_of LEVEL ROLE METHOD`.
ratio_of() {
    local v n
    v=$(cv "calls_$1_$2_$3_p50_ns") n=$(cv "calls_$1_$2_null_p50_ns")
    [[ -n $v && -n $n ]] || return 1
    awk -v a="$v" -v b="$n" 'BEGIN { printf "%.2f", a / b }'
}
goal_of() {
    case $1 in charge | transfer) echo 1.3 ;; release | getProcessUsage) echo 1.1 ;; esac
}
roles=(app gralloc compositor)
# The service's binder thread pool (chargetransferd --threads default).
threads() { sed -n '/Binder threads/,/pub threads/s/.*default_value_t = \([0-9]*\).*/\1/p' "$root/src/daemon.rs"; }
role_name() {
    case $1 in app) echo "app charging itself" ;; gralloc) echo "gralloc (uid 1003) for an app" ;;
        compositor) echo "compositor (uid 1000) pushing to an app" ;; esac
}

# How much the null call itself moved in this boot: the spread of the callers' null p50s and the
# worst null p99 over its p50.
noise_note() {
    awk '$1 == "result" && $2 ~ /^calls_.*_null_p50_ns$/ { k = $2; sub(/_p50_ns$/, "", k); p50[k] = $3 }
         $1 == "result" && $2 ~ /^calls_.*_null_p99_ns$/ { k = $2; sub(/_p99_ns$/, "", k); p99[k] = $3 }
         END {
             lo = -1; hi = 0; worst = 0
             for (k in p50) { if (lo < 0 || p50[k] < lo) lo = p50[k]; if (p50[k] > hi) hi = p50[k]
                              if (p99[k] / p50[k] > worst) worst = p99[k] / p50[k] }
             printf "The null call itself is not steady in this boot: its p50 ranges from %.0f µs to %.0f µs between\n", lo / 1e3, hi / 1e3
             printf "the clients above, and its p99 reaches %.0f× its p50. The guest shares the host'"'"'s 2 cores with\n", worst
             printf "other builds, so a ratio moves by more than the goals'"'"' margins between clients of the same\n"
             printf "boot; the system-call account below is what does not depend on the host'"'"'s load.\n"
         }' "$raw/calls-bench.txt"
}

callers_table() {
    local lv=() l r m head="| call |" sep="|---|" row cell n
    mapfile -t lv < <(levels)
    for r in "${roles[@]}"; do
        for l in "${lv[@]}"; do head+=" $r, $(cv "live_$l") live | × null |" sep+="---:|---:|"; done
    done
    echo "$head goal |"
    echo "$sep---:|"
    for m in null charge transfer release getProcessUsage; do
        row="| \`$m\` |"
        for r in "${roles[@]}"; do
            for l in "${lv[@]}"; do
                n=$(cv "calls_${l}_${r}_${m}_p50_ns")
                if [[ $m == null ]]; then
                    n=$(cv "calls_${l}_${r}_null_p50_ns")
                    row+=" $(dur "$n") | 1.00 |"
                elif [[ -z $n ]]; then
                    row+=" — | — |"
                else
                    cell=$(ratio_of "$l" "$r" "$m")
                    if awk -v c="$cell" -v g="$(goal_of "$m")" 'BEGIN { exit !(c > g) }'; then cell="**$cell** ✗"; fi
                    row+=" $(dur "$n") | $cell |"
                fi
            done
        done
        [[ $m == null ]] && row+=" — |" || row+=" ≤ $(goal_of "$m")× |"
        echo "$row"
    done
}

# Where a call's time goes, per caller and method at each level: its p50, the mean time the
# service spent in it (its dumpState call times), and the rest (binder's transport of the call,
# its fd and reply), each over the same client's null p50.
service_table() {
    local l r m p n s
    echo "| caller | call | live buffers | call p50 | × null | in the service (p50, ≤) | × null | the rest: binder and scheduling | × null |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for r in "${roles[@]}"; do
        for m in charge transfer release getProcessUsage; do
            for l in $(levels); do
                p=$(cv "calls_${l}_${r}_${m}_p50_ns") s=$(cv "calls_${l}_${r}_${m}_service_p50_ns")
                n=$(cv "calls_${l}_${r}_null_p50_ns")
                [[ -n $p && -n $s && -n $n ]] || continue
                awk -v p="$p" -v s="$s" -v n="$n" -v r="$r" -v m="$m" -v l="$(cv "live_$l")" -v dp="$(dur "$p")" \
                    -v ds="$(dur "$s")" -v dr="$(dur "$((p > s ? p - s : 0))")" \
                    'BEGIN { printf "| %s | `%s` | %s | %s | %.2f | %s | %.2f | %s | %.2f |\n", r, m, l, dp, p / n, ds, s / n, dr, (p > s ? p - s : 0) / n }'
            done
        done
    done
}

# What each step a method must take costs in this guest (calls-bench's `cost_*` lines): in a
# loop, and right after a switch to another process, as a handler meets it.
costs_table() {
    local k
    echo "| step | p50 in a loop | p50 after a switch |"
    echo "|---|---:|---:|"
    for k in getppid:"a bare system call (\`getppid\`)" ppoll_pidfd:"the identity check: one \`ppoll\` of a pidfd" \
        fd_dup_close:"binder's handling of a received fd: a dup and two \`close\`s" \
        fstat_dmabuf:"\`fstat\` of a dma-buf" learn_buffer:"learning a new buffer: \`fstat\` + its fdinfo (\`openat\` in the fdinfo directory kept open, \`read\`, \`close\`)" \
        journal_write:"the journal's \`write\` of one record" \
        holder_check:"the holder rule's check of one process (its fd links and maps)"; do
        echo "| ${k#*:} | $(dur "$(cv "cost_${k%%:*}_ns")") | $(dur "$(cv "cost_${k%%:*}_switched_ns")") |"
    done
}

# The service's own code per method (`--accountant-cycles`: chargectl bench's cycle on an
# in-memory accountant): host and guest, in a loop and after a switch.
cycles_table() {
    local m h hs g gs
    echo "| method | host, loop | host, after a switch | guest, loop | guest, after a switch | guest after a switch ÷ host after a switch |"
    echo "|---|---:|---:|---:|---:|---:|"
    for m in charge getProcessUsage transfer release; do
        h=$(val cycles-host.txt "cycles_${m}_ns") hs=$(val cycles-host.txt "cycles_${m}_switched_ns")
        g=$(val cycles-guest.txt "cycles_${m}_ns") gs=$(val cycles-guest.txt "cycles_${m}_switched_ns")
        echo "| \`$m\` | $(dur "$h") | $(dur "$hs") | $(dur "$g") | $(dur "$gs") | $(ratio "$gs" "$hs")× |"
    done
}

# The steps each caller's method must take beyond a null call (its system-call account).
floor_steps() {
    case $1/$2 in
        app/charge | compositor/charge) echo fd_dup_close learn_buffer ppoll_pidfd journal_write ;;
        gralloc/charge) echo fd_dup_close learn_buffer ppoll_pidfd ppoll_pidfd journal_write ;;
        compositor/transfer) echo fd_dup_close fstat_dmabuf ppoll_pidfd ppoll_pidfd journal_write ;;
        app/release) echo ppoll_pidfd holder_check journal_write ;;
        */release) echo ppoll_pidfd journal_write ;;
        *) echo ;;
    esac
}

# The floor of each method at the smallest level: a null call plus the steps it must take,
# over the null call; then what this guest charges for the same call when each step and the
# service's own code (cycles-guest.txt) run as a handler meets them, after a switch; against
# what it measured and what the service spent in it.
floor_table() {
    local l r m n p s steps extra extra_sw k own
    l=$(levels | head -1)
    echo "| caller | call | measured | floor: null + its steps | null + its steps and the service's code, after a switch | service p50 | steps beyond a null call |"
    echo "|---|---|---:|---:|---:|---:|---|"
    for r in "${roles[@]}"; do
        for m in charge transfer release getProcessUsage; do
            p=$(cv "calls_${l}_${r}_${m}_p50_ns") n=$(cv "calls_${l}_${r}_null_p50_ns")
            [[ -n $p && -n $n ]] || continue
            s=$(cv "calls_${l}_${r}_${m}_service_p50_ns")
            steps=$(floor_steps "$r" "$m") extra=0 extra_sw=0
            for k in $steps; do
                extra=$((extra + $(cv "cost_${k}_ns")))
                extra_sw=$((extra_sw + $(cv "cost_${k}_switched_ns")))
            done
            own=$(val cycles-guest.txt "cycles_${m}_switched_ns")
            awk -v p="$p" -v n="$n" -v e="$extra" -v es="$((extra_sw + own))" -v r="$r" -v m="$m" -v s="$(dur "${s:-0}")" \
                -v st="${steps:-none}" \
                'BEGIN { printf "| %s | `%s` | %.2f× | %.2f× | %.2f× | %s | %s |\n", r, m, p / n, (n + e) / n, (n + es) / n, s, st }'
        done
    done
}

# The service's CPU per call by where it falls (profile.txt), beside each call's p50 in that run
# and its excess over the null call's.
profile_table() {
    local hz it m p ratio k own sys reply null_ns
    hz=$(val profile.txt profile_hz) it=$(val profile.txt profile_iterations)
    # Samples as mean µs per call (divided by $2 calls sharing them).
    us() { awk -v s="${1:-0}" -v hz="$hz" -v it="$it" -v d="${2:-1}" 'BEGIN { printf "%.0f", s * 1e6 / hz / it / d }'; }
    pv() { val profile.txt "profile_$1_samples" 2>/dev/null || echo 0; }
    null_ns=$(to_ns "$(binder_rows chargectl-profiled.txt | sed -n 's/^null|\([^|]*\)|.*/\1/p')")
    echo "| call | p50 under perf | × null | p50 − null p50 | the service's code in the method | its system calls | writing the reply record | the three, of p50 − null p50 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    binder_rows chargectl-profiled.txt | while IFS='|' read -r m p ratio; do
        [[ $p == n/a ]] && continue
        k=$m
        [[ $m == null ]] && k=ping
        reply=0
        case $m in
            charge | transfer) reply=$(us "$(pv reply_ChargeInfo)" 2) ;;
            getProcessUsage) reply=$(us "$(pv reply_UsageReport)") ;;
        esac
        own=$(us "$(pv "${k}_user")") sys=$(us "$(pv "${k}_kernel")")
        awk -v m="$m" -v p="$p" -v r="$ratio" -v pn="$(to_ns "$p")" -v n="$null_ns" -v o="$own" -v s="$sys" -v q="$reply" \
            'BEGIN { x = (pn - n) / 1000; t = o + s + q
                     printf "| `%s` | %s | %s | %s | %d µs | %d µs | %s | %s |\n", m, p, r, (m == "null" ? "—" : sprintf("%.0f µs", x)),
                         o, s, (q > 0 ? q " µs" : "—"), (m == "null" || x <= 0 ? "—" : sprintf("%.0f%%", 100 * t / x)) }'
    done
    echo "| every call (the five above, averaged): rsbinder's own code outside the methods | | | | $(us "$(pv binder_user)" 5) µs | | | |"
    echo "| every call: binder's kernel path in the service (its \`ioctl\`s, lock spinning, wake-ups) | | | | | $(us "$(pv binder_kernel)" 5) µs | | |"
}

# p99 at the largest level over p99 at the smallest, per caller and method (goal ≤ 1.2).
p99_table() {
    local lv=() lo hi r m a b cell
    mapfile -t lv < <(levels)
    lo=${lv[0]} hi=${lv[-1]}
    echo "| call |$(printf ' %s |' "${roles[@]}")"
    echo "|---|$(printf -- '---:|%.0s' "${roles[@]}")"
    for m in charge transfer release getProcessUsage; do
        printf '| `%s` |' "$m"
        for r in "${roles[@]}"; do
            a=$(cv "calls_${lo}_${r}_${m}_p99_ns") b=$(cv "calls_${hi}_${r}_${m}_p99_ns")
            if [[ -z $a || -z $b ]]; then printf ' — |'; continue; fi
            cell=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b / a }')
            if awk -v c="$cell" 'BEGIN { exit !(c > 1.2) }'; then cell="**$cell×** ✗"; else cell="$cell×"; fi
            printf ' %s → %s (%s) |' "$(dur "$a")" "$(dur "$b")" "$cell"
        done
        echo
    done
}

concurrency_table() {
    local l n one rate m
    echo "| live buffers | clients | AIDL calls/s | × 1 client | charge p50 / p99 | getProcessUsage p50 / p99 | release p50 / p99 | null p50 / p99 |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    for l in $(levels); do
        one=$(cv "conc_${l}_1_calls_per_s")
        for n in $(sed -n "s/^result conc_${l}_\([0-9]*\)_calls_per_s .*/\1/p" "$raw/calls-bench.txt"); do
            rate=$(cv "conc_${l}_${n}_calls_per_s")
            printf '| %s | %s | %s | %s |' "$(cv "live_$l")" "$n" "$rate" \
                "$(awk -v a="$rate" -v b="${one:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "—" }')"
            for m in charge getProcessUsage release null; do
                printf ' %s / %s |' "$(dur "$(cv "conc_${l}_${n}_${m}_p50_ns")")" "$(dur "$(cv "conc_${l}_${n}_${m}_p99_ns")")"
            done
            echo
        done
    done
}

# System calls per call on the service's binder threads: before (benches/guest-syscalls-before.txt,
# the same measurement on the code before issue 13) and after (this run).
syscalls_table() {
    local before=$root/benches/guest-syscalls-before.txt r m b a d
    echo "| caller | call | before | after | after, by system call |"
    echo "|---|---|---:|---:|---|"
    for r in "${roles[@]}"; do
        for m in null charge transfer release getProcessUsage; do
            a=$(cv "sys_${r}_${m}")
            [[ -n $a ]] || continue
            b=$(awk -v k="sys_${r}_${m}" '$1 == "result" && $2 == k { print $3 }' "$before" 2>/dev/null)
            d=$(cv "sysd_${r}_${m}" | sed 's/,/, /g')
            echo "| $r | \`$m\` | ${b:-—} | $a | $d |"
        done
    done
}

step_report() {
    for f in ledger.txt journal.txt rss.txt cycles-host.txt cycles-guest.txt vts-bench.txt chargectl-empty.txt \
        chargectl-profiled.txt profile.txt scan-bench.txt calls-bench.txt; do
        [[ -s $raw/$f ]] || die "$raw/$f is missing: run the steps before report"
    done
    bin_dir
    split_loaded
    local date host_cpu host_kernel guest_kernel
    date=$(date -u +'%Y-%m-%d %H:%M UTC')
    host_cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
    host_kernel=$(uname -r)
    guest_kernel=$(cat "$raw/guest-kernel.txt" 2>/dev/null || echo '?')
    local usage full full_min one null
    usage=$(val vts-bench.txt usage_p50_ns) full=$(val vts-bench.txt full_scan_p50_ns)
    full_min=$(val vts-bench.txt full_scan_min_ns) one=$(val vts-bench.txt pid_scan_p50_ns)
    null=$(val vts-bench.txt null_p50_ns)
    local speedup goal
    speedup=$(ratio "$full" "$usage")
    if awk -v r="$speedup" 'BEGIN { exit !(r >= 2000) }'; then goal="met"; else goal="**not met**"; fi
    local rss_before rss_after rss_per g_before g_mid g_after g_buf0 g_mid_buf g_buf1 g_per g_proc
    rss_before=$(val rss.txt rss_before_kib) rss_after=$(val rss.txt rss_after_kib) rss_per=$(val rss.txt rss_bytes_per_buffer)
    g_before=$(val vts-bench.txt service_rss_before_kib) g_mid=$(val vts-bench.txt service_rss_mid_kib)
    g_after=$(val vts-bench.txt service_rss_after_kib)
    g_buf0=$(val vts-bench.txt ledger_buffers_before) g_mid_buf=$(val vts-bench.txt ledger_buffers_mid)
    g_buf1=$(val vts-bench.txt ledger_buffers_after)
    # Second round: the same processes, more buffers (per buffer). First round: new processes
    # and buffers; what the buffers do not explain is per client process.
    g_per=$(awk -v a="$g_mid" -v b="$g_after" -v n="$((g_buf1 - g_mid_buf))" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    g_proc=$(awk -v a="$g_before" -v b="$g_mid" -v n="$((g_mid_buf - g_buf0))" -v per="$g_per" -v p="$procs" \
        'BEGIN { v = ((b - a) * 1024 - per * n) / p / 1024; printf "%.0f", (v < 0 ? 0 : v) }')
    # The running service at 100k buffers held by the same processes: measured at g_buf1, the
    # rest at the guest's cost per buffer (and at the host ledger's, for comparison).
    local est_guest est_host
    est_guest=$(awk -v base="$g_after" -v per="$g_per" -v n="$((rss_buffers - g_buf1))" 'BEGIN { printf "%.1f", (base * 1024 + per * n) / 1048576 }')
    est_host=$(awk -v base="$g_after" -v per="$rss_per" -v n="$((rss_buffers - g_buf1))" 'BEGIN { printf "%.1f", (base * 1024 + per * n) / 1048576 }')
    {
        cat <<EOF
# Benchmarks

Generated by \`vts/benchmarks.sh\` on $date — every number below comes from one run of it
(raw outputs in \`target/bench/\`). Host: $host_cpu, $(nproc) cores shared with other builds,
Linux $host_kernel. Guest: Debian's kernel $guest_kernel under QEMU **TCG** (software
emulation, no KVM) with the binder module, 2 vCPUs, 2 GiB.

**About the guest numbers.** Under TCG every instruction is emulated, so absolute guest times are
one to two orders of magnitude slower than on a phone and vary between boots. Only ratios
between operations measured in the same boot are meaningful, and those are what the tables
lead with. Host numbers (ledger, journal, memory) are native but come from a shared 2-core build
machine, so treat them as upper bounds.

## 1. Ledger operations vs live buffers and cgroups

![ledger op latency vs live buffers and cgroups](benchmarks.svg)

EOF
        ledger_report
        cat <<EOF

## 2. Binder calls in the guest

\`chargectl bench --iterations $calls\` (root, a trusted caller) on one binder connection: each
iteration times a null call (\`ping\`), \`charge\` of a 4 KiB system-heap dma-buf,
\`getProcessUsage\` of itself, \`transfer\` of the charge to its parent process, and \`release\`.
p50 over the iterations. The second column set repeats it while the $procs holder processes of
section 3 keep $g_buf1 buffers charged.

| call | p50, empty ledger | × null | p50, $g_buf1 live buffers | × null |
|---|---:|---:|---:|---:|
EOF
        paste -d'|' <(binder_rows chargectl-empty.txt) <(binder_rows chargectl-loaded.txt | cut -d'|' -f2-) |
            awk -F'|' '{ printf "| `%s` | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
        cat <<EOF

Here the caller is root, a trusted caller that holds its buffer while it releases it; the callers
of a device follow.

### The callers of a device, at $(levels | paste -sd/ -) live buffers

\`chargetransfer-vts --calls-bench\` (section 3's holder processes keep the ledger at each level):
one client per caller, in its own uid and \`/uid_<uid>/pid_<pid>\` cgroup, under the production
policy plus the lane's: **app** (uid 10000) charges a fresh 4 KiB system-heap dma-buf to itself,
asks its own usage, closes the buffer and releases the charge; **gralloc** (uid 1003, trusted)
charges a fresh buffer on an app's behalf (\`chargeOnBehalf\`), asks that app's usage and
releases the charge while it still holds the buffer; the **compositor** (uid 1000, trusted)
charges a buffer to itself, pushes it to the app (\`transfer\`), asks the app's usage and
releases it. Each client times a null call (\`ping\`) first in every iteration, $(cv iters) iterations;
p50 and its ratio to that client's null p50. Goals: charge and transfer ≤ 1.3×, release and
\`getProcessUsage\` ≤ 1.1× (✗ marks a miss).

$(callers_table)

$(noise_note)

Where the time of each call goes (the service times every method from its handler's entry to
its reply; \`dumpState\` shows those times, read here before and after each client's run):

$(service_table)

What the steps a method must take cost in this guest, each timed alone ($(cv iters) times, p50):
in a loop, and right after a round trip to another process (\`cat\` over two pipes), which is how
a binder call's handler meets them — woken after another process ran on the CPU:

$(costs_table)

The service's own code, without binder or file I/O: \`chargetransfer-vts --accountant-cycles
$cycles\` runs chargectl bench's cycle (charge, \`getProcessUsage\`, transfer to the parent,
release) on an in-memory accountant, p50 per method, on the host and in the guest, in a loop and
after such a switch:

$(cycles_table)

Under TCG a switch between processes costs the code after it far more than on the host: QEMU
drops its software TLB and its jump cache of translated code when the guest changes address
space, so the first pass over every page and branch after a switch goes the slow way; a binder
call's handler runs that way on every call, and so do its system calls. The floor below adds
up, for each method at $(cv "live_$(levels | head -1)") live buffers: a null call plus the steps it must take (by the
system-call account below) timed in a loop, and the same with the steps and the service's own code
timed after a switch, as this guest charges a handler for them:

$(floor_table)

Where the service's CPU time goes, sampled: \`chargectl bench --iterations $calls\` again
(empty ledger, root) while \`perf record -F $profile_hz --call-graph dwarf\` (Debian's perf, copied
into the guest) samples the service's threads; vts/profile.awk counts each sample once, by the
AIDL method on its stack (its own code, or the system calls it makes), the reply record rsbinder
writes after the method, or the transport every call shares. Per call, samples × period ÷ calls
(means; the ChargeInfo reply is shared by charge and transfer, so split in two); perf's own
sampling slows the calls. The last column is how much of what a call costs beyond a null call
the service's CPU in it accounts for; the rest is binder carrying a bigger call (an fd, a reply
record) and waits:

$(profile_table)

p99 at the larger level against p99 at the smaller (goal ≤ 1.2×):

$(p99_table)

### Concurrency

1, 2, 4 and 8 app clients at once (each its own uid and cgroup, the app cycle above, $(cv iters)
iterations each) on the guest's 2 vCPUs against the service's $(threads) binder threads: AIDL calls
per second over the wall time, p50 / p99 per method over every client's calls. Goal: 8 clients
≥ 1.5× one client's throughput.

$(concurrency_table)

### System calls per method

Each caller's methods alone, $(cv trace_calls) calls each, while \`strace -f\` (Debian's, copied
into the guest by this script) follows the service: the system calls of its binder threads per
call (the lifecycle threads — pidfd reaper, journal flusher — are left out), before issue 13 (the
same measurement on the code before it, \`benches/guest-syscalls-before.txt\`) and now. A null
call costs binder's own \`ioctl\`s; a call that carries an fd adds binder's own \`fcntl\`
(F_DUPFD_CLOEXEC of the received fd) and two \`close\`s.

$(syscalls_table)

$(cat "$root/benches/guest-syscalls-notes.md")

## 3. Per-app usage: the service vs scanning /proc

$procs holder processes, each an app uid in its own \`/uid_<uid>/pid_<pid>\` cgroup, each holding and
having charged $bufs dma-bufs of 4 KiB from \`/dev/dma_heap/system\` ($((procs * bufs)) buffers). The
VTS binary, as root, then asks for one app's usage both ways ($calls calls, rotating over the
apps; $scans full scans):

| method | p50 | vs \`getProcessUsage\` |
|---|---:|---:|
| \`getProcessUsage(pid)\` over binder (the ledger answers) | $(dur "$usage") | 1× |
| null binder call, same process, for scale | $(dur "$null") | $(awk -v a="$null" -v b="$usage" 'BEGIN { printf "%.2f", a / b }')× |
| full libdmabufinfo-style scan (\`ProcFs::scan_all\`: every pid's fdinfo + maps, merged by inode; $(val vts-bench.txt scan_buffers) buffers in $(val vts-bench.txt scan_processes) processes) | $(dur "$full") (best of $scans: $(dur "$full_min")) | **${speedup}×** |
| one process's fdinfo + maps only (\`ProcFs::dmabufs\`; cannot tell who pays for a shared buffer) | $(dur "$one") | $(ratio "$one" "$usage")× |

Goal ≥ 2000×: $goal (${speedup}× at p50, $(ratio "$full_min" "$usage")× against the fastest scan).
A scan's cost grows with every process and fd on the device.
$(usage_note)

### The full-device view: BPF iterators vs the procfs scan

\`chargetransfer-vts --scan-bench\`: 200 processes holding 4 KiB system-heap dma-bufs, topped up
to each level in the same boot; p50 of 3 scans by each backend (\`BpfScanner::scan_all\` reads
the four iterators of holders.bpf.c; \`ProcFs::scan_all\` as above). Goal ≥ 20× at 10000 buffers.

| buffers | BPF | procfs | BPF faster |
|---|---|---|---|
$(scan_rows)

$(scan_per_fd)

$(scan_phases)

## 4. Journal

\`cargo bench --bench journal\`, one timed run per line (host; the journal in $(stat -f -c %T "${TMPDIR:-/tmp}") under ${TMPDIR:-/tmp}, a disk shared with other builds):

| measurement | result |
|---|---|
| append, fsync per record | $(jline 'append fsync') |
| append_all(64), one fsync per 64 records | $(jline 'append_all(64) fsync') |
| append, batch (the default: written before the reply, synced every second) | $(jline 'append batch, one flush') |
| **replay of 1,000,000 records** (goal < 1 s) | **$(jline 'replay 1000000 records')** |
| the same records as JSON, for comparison | $(jline 'as JSON instead') |
| snapshot (compaction) | $(jline 'snapshot') |
| open from that snapshot | $(jline 'open from that snapshot') |

## 5. Memory

| measurement | result |
|---|---|
| host: accountant with $(val rss.txt rss_buffers) live buffers in $(val rss.txt rss_cgroups) app cgroups (synthetic charges, in memory) | VmRSS $rss_before KiB → $rss_after KiB: **$rss_per bytes per buffer** |
| guest: the running service (\`chargetransferd\`), idle → $procs client processes with $((g_mid_buf - g_buf0)) buffers → the same processes with $g_buf1 | $g_before KiB → $g_mid KiB → $g_after KiB: **$g_per bytes per buffer** (second step), ≈ $g_proc KiB per client process (first step, less its buffers) |
| service RSS at $rss_buffers live buffers in those $procs processes (measured at $g_buf1, the rest at the guest's cost per buffer; at the host ledger's) | **≈ $est_guest MiB** (≈ $est_host MiB) |

The host figure is the ledger alone: one record per buffer (inode → size, owner cgroup, pid,
heap, flags) in a hash map with its spare capacity, plus one node per cgroup with a counter per
pool (\`benches/ledger.rs\` counts the allocator bytes of the record itself: section 1). The
guest's cost per buffer is the running service's, so it includes allocator slack and hash-map
growth falling into that step; the per-process part is what the service keeps per client (binder
connection and death notification, pidfd, identity, the owner's cgroups). The journal is on disk
and does not grow the RSS.

## Regenerate

\`\`\`sh
vts/benchmarks.sh          # every step, ~5 min warm (needs what vts/run-lane.sh needs: QEMU, Debian's kernel)
vts/benchmarks.sh report   # rewrite BENCHMARKS.md and benchmarks.svg from the raw outputs in target/bench
\`\`\`
EOF
    } >"$root/BENCHMARKS.md"
    plot_input >"$raw/plot.txt"
    "$BIN_DIR/chargetransfer-vts" --plot "$raw/plot.txt" "$root/benchmarks.svg"
    log "wrote $root/BENCHMARKS.md and $root/benchmarks.svg"
}

# The ledger bench's `plot: <axis> <op>_<p50|p99> <x> <ns>` lines as `--plot` input.
plot_input() {
    sed -n 's/^plot: //p' "$raw/ledger.txt" | sed -E 's/^([a-z]+) ([a-z]+)_(p50|p99) /\1 \2\/\3 /'
}

for s in "${steps[@]}"; do
    case $s in
        ledger | journal | rss | guest | report) "step_$s" ;;
        *) die "unknown step $s (ledger journal rss guest report)" ;;
    esac
done
