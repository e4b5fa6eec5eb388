#!/usr/bin/env bash
# Boot a QEMU guest (kernel + lane initramfs), share HOSTDIR at /share over 9p,
# run /share/RELPATH in the guest and exit with its exit status.
#
# Usage: run-guest.sh --kernel VMLINUZ [--modules ROOT] [--append "ARGS"]
#                     [--timeout SECONDS] [--mem SIZE] [--smp N]
#                     [--extra-modules "m1 m2"] [--accel tcg|kvm|auto]
#                     [--qemu-arg ARG]... --share HOSTDIR --script RELPATH
#   --kernel         bzImage to boot
#   --modules ROOT   module tree with lib/modules/<abi>/modules.dep (debian-kernel.sh's
#                    MODULES=). Without it the kernel must have binder/9p/virtio built in.
#   --append         extra kernel command line (e.g. dma_heap.mem_accounting=1;
#                    binder_linux.devices=binder,hwbinder works too: init passes
#                    <module>.<param>= to insmod)
#   --timeout        seconds before QEMU is killed (default 300)
#   --mem / --smp    guest RAM (default 1G) / CPUs (default 2)
#   --extra-modules  more modules to put in the initramfs and load (deps resolved)
#   --accel          tcg (default), kvm, or auto (probe KVM once per machine; cached)
#   --qemu-arg       one extra QEMU argument (repeatable)
#   --share          host directory mounted at /share (console.log and .guest-exit land here)
#   --script         path relative to HOSTDIR; run directly if executable, else with sh
# Output: the guest console on stdout (also HOSTDIR/console.log); "run-guest: ..." on stderr.
# Exit: the guest script's exit status (0-255); 99 if the guest never reported one
#       (crash, timeout, mount failure) with a loud "run-guest: FAIL" line;
#       2 usage error; 1 host-side setup error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/chargetransfer

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" >&2; exit 2; }
die() { echo "run-guest: $*" >&2; exit 1; }
log() { echo "run-guest: $*" >&2; }

kernel='' modroot='' append='' timeout=300 mem=1G smp=2 share='' script=''
accel=${LANE_ACCEL:-tcg}
extra_modules=''
qemu_extra=()
while (($#)); do
    case $1 in
        --kernel) kernel=${2:-}; shift ;;
        --modules) modroot=${2:-}; shift ;;
        --append) append=${2:-}; shift ;;
        --timeout) timeout=${2:-}; shift ;;
        --mem) mem=${2:-}; shift ;;
        --smp) smp=${2:-}; shift ;;
        --extra-modules) extra_modules=${2:-}; shift ;;
        --accel) accel=${2:-}; shift ;;
        --qemu-arg) qemu_extra+=("${2:-}"); shift ;;
        --share) share=${2:-}; shift ;;
        --script) script=${2:-}; shift ;;
        -h|--help) usage ;;
        *) echo "run-guest: unknown argument '$1'" >&2; usage ;;
    esac
    (($# > 0)) && shift
done
[[ -n $kernel && -n $share && -n $script ]] || { echo "run-guest: --kernel, --share and --script are required" >&2; usage; }
[[ $timeout =~ ^[0-9]+$ ]] || { echo "run-guest: --timeout must be seconds" >&2; usage; }
[[ $script != /* && $script != *..* && $script =~ ^[^[:space:]]+$ ]] ||
    { echo "run-guest: --script must be a relative path without spaces or '..'" >&2; usage; }
case $accel in tcg|kvm|auto) ;; *) echo "run-guest: --accel must be tcg, kvm or auto" >&2; usage ;; esac
[[ -f $kernel ]] || die "kernel '$kernel' not found"
[[ -d $share ]] || die "share '$share' is not a directory"
share=$(cd "$share" && pwd -P)
kernel=$(readlink -f "$kernel")
[[ -e $share/$script ]] || die "script '$share/$script' not found"

"$HERE/host-deps.sh" || die "host-deps.sh failed"

# ---------------------------------------------------------------- modules
# Kernel release from the bzImage header (kernel_version field at 0x20E).
kernel_release() {
    local off
    [[ $(dd if="$1" bs=1 skip=514 count=4 2>/dev/null) == HdrS ]] || return 1
    off=$(od -An -tu2 -j 526 -N2 "$1" | tr -d ' ')
    dd if="$1" bs=1 skip=$((off + 512)) count=256 2>/dev/null | tr '\0' '\n' | head -n1 | cut -d' ' -f1
}

mods_order=()   # "name path" in load order
if [[ -n $modroot ]]; then
    [[ -d $modroot ]] || die "modules root '$modroot' not found"
    modroot=$(cd "$modroot" && pwd -P)
    abi=$(kernel_release "$kernel" || true)
    mdir=$modroot/lib/modules/$abi
    if [[ -z $abi || ! -f $mdir/modules.dep ]]; then
        mdir=$modroot/usr/lib/modules/$abi
    fi
    [[ -n $abi && -f $mdir/modules.dep ]] ||
        die "no modules.dep for kernel release '${abi:-?}' under $modroot (run depmod -b ROOT ABI)"
    declare -A dep_of=() path_of=() seen=()
    while IFS= read -r line; do
        p=${line%%:*}
        n=${p##*/}; n=${n%%.ko*}; n=${n//-/_}
        path_of[$n]=$p
        dep_of[$n]=${line#*:}
    done <"$mdir/modules.dep"
    builtin_list=$(sed -e 's#.*/##' -e 's/\.ko.*//' -e 's/-/_/g' "$mdir/modules.builtin" 2>/dev/null || true)
    add_mod() { # NAME: append NAME after its dependencies
        local n=${1//-/_} dn i deps=()
        [[ -n ${seen[$n]:-} ]] && return 0
        seen[$n]=1
        if [[ -z ${path_of[$n]:-} ]]; then
            grep -qx "$n" <<<"$builtin_list" && return 0
            die "module '$n' is neither in modules.dep nor built in ($abi)"
        fi
        read -r -a deps <<<"${dep_of[$n]}"
        # modules.dep lists the deepest dependency last: load from the end.
        for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
            dn=${deps[i]##*/}; dn=${dn%%.ko*}
            add_mod "$dn"
        done
        mods_order+=("$n ${path_of[$n]}")
    }
    # binder_linux: /dev/binder. 9p + 9pnet_virtio: the share (virtio_pci is built in on Debian).
    # shellcheck disable=SC2086 # word list
    for m in binder_linux 9p 9pnet_virtio $extra_modules; do
        add_mod "$m"
    done
    log "kernel $abi, modules: $(for e in "${mods_order[@]}"; do printf '%s ' "${e%% *}"; done)"
fi

# ---------------------------------------------------------------- initramfs
busybox=$(command -v busybox) || die "busybox not found (busybox-static)"
busybox=$(readlink -f "$busybox")
is_static() { # ELF64 without a PT_INTERP program header
    local phoff phnum i
    phoff=$(od -An -tu8 -j 32 -N 8 "$1" | tr -d ' ')
    phnum=$(od -An -tu2 -j 56 -N 2 "$1" | tr -d ' ')
    for ((i = 0; i < phnum; i++)); do
        [[ $(od -An -tu4 -j $((phoff + i * 56)) -N 4 "$1" | tr -d ' ') == 3 ]] && return 1
    done
    return 0
}
is_static "$busybox" || die "$busybox is dynamically linked (install busybox-static)"
key=$({
    echo "lane-initramfs-v1"
    sha256sum "$busybox" "$HERE/guest-init.sh" "${BASH_SOURCE[0]}" | cut -d' ' -f1
    for e in "${mods_order[@]}"; do
        echo "${e%% *}"; sha256sum "$mdir/${e#* }" | cut -d' ' -f1
    done
} | sha256sum | cut -c1-24)
initrd=$CACHE/initramfs/$key.cpio.gz
if [[ ! -f $initrd ]]; then
    t0=${EPOCHREALTIME/,/.}
    mkdir -p "$CACHE/initramfs"
    stage=$(mktemp -d "$CACHE/initramfs/.stage-XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,share,root,etc,lib/modules/lane,run,var/tmp}
    cp "$busybox" "$stage/bin/busybox"
    while IFS= read -r a; do
        [[ -e $stage/$a || -L $stage/$a ]] || ln -s /bin/busybox "$stage/$a"
    done < <("$busybox" --list-full)
    install -m 0755 "$HERE/guest-init.sh" "$stage/init"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$stage/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
    # /dev/console lets the kernel hand init its stdio; guest-init.sh reopens it anyway.
    if [[ $(id -u) -eq 0 ]]; then mknod -m 600 "$stage/dev/console" c 5 1; fi
    : >"$stage/lib/modules/lane/order"
    for e in "${mods_order[@]}"; do
        n=${e%% *} src=$mdir/${e#* }
        case $src in
            *.ko.xz) xz -dc "$src" ;;
            *.ko.gz) gzip -dc "$src" ;;
            *.ko.zst) zstd -dcq "$src" ;;
            *) cat "$src" ;;
        esac >"$stage/lib/modules/lane/$n.ko" || die "cannot decompress $src"
        echo "$n" >>"$stage/lib/modules/lane/order"
    done
    (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 >"$initrd.tmp.$$"
    mv "$initrd.tmp.$$" "$initrd"
    # Keep the 20 newest images.
    find "$CACHE/initramfs" -maxdepth 1 -name '*.cpio.gz' -printf '%T@ %p\n' | sort -rn |
        tail -n +21 | cut -d' ' -f2- | xargs -r rm -f
    rm -rf "$stage"
    trap - EXIT
    log "built initramfs $initrd ($(du -k "$initrd" | cut -f1) KiB) in $(awk -v a="$t0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.2f", b - a }')s"
fi

# ---------------------------------------------------------------- accelerator
# /dev/kvm on the build machines is a nested software hypervisor on which QEMU
# aborts (-cpu host|max) or stalls in the decompressor; TCG is the default.
# --accel auto proves KVM with one probe boot per machine and caches the answer.
if [[ $accel == auto ]]; then
    mid=$(cat /etc/machine-id 2>/dev/null || hostname)
    probe=$CACHE/kvm-probe-$mid
    if [[ ! -f $probe ]]; then
        ans=tcg
        if [[ -w /dev/kvm ]]; then
            pdir=$(mktemp -d)
            printf 'exit 0\n' >"$pdir/probe.sh"
            if "${BASH_SOURCE[0]}" --accel kvm --kernel "$kernel" ${modroot:+--modules "$modroot"} \
                --timeout 20 --share "$pdir" --script probe.sh >/dev/null 2>&1; then
                ans=kvm
            fi
            rm -rf "$pdir"
        fi
        echo "$ans" >"$probe"
        log "KVM probe: $ans (cached in $probe)"
    fi
    accel=$(cat "$probe")
fi
if [[ $accel == kvm ]]; then cpu=host; else cpu=max; fi

# ---------------------------------------------------------------- boot
exitfile=$share/.guest-exit
rm -f "$exitfile"
qemu=(qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -m "$mem" -smp "$smp"
    -nographic -no-reboot -nic none
    -kernel "$kernel" -initrd "$initrd"
    -append "console=ttyS0 panic=-1 quiet lane.script=$script $append"
    -virtfs "local,path=$share,mount_tag=share,security_model=none,id=share"
    "${qemu_extra[@]}")
log "boot $(basename "$kernel") accel=$accel timeout=${timeout}s share=$share script=$script"
start=$(date +%s)
set +e
timeout --kill-after=10 "$timeout" "${qemu[@]}" </dev/null 2>&1 |
    sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' | tee "$share/console.log"
qrc=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))

if [[ ! -f $exitfile ]]; then
    if ((qrc == 124 || qrc == 137)); then
        why="timed out after ${timeout}s"
    else
        why="qemu exited $qrc after ${elapsed}s"
    fi
    echo "run-guest: FAIL: guest never reported an exit status ($why); see $share/console.log" >&2
    exit 99
fi
rc=$(tr -d '[:space:]' <"$exitfile")
[[ $rc =~ ^[0-9]+$ ]] || { echo "run-guest: FAIL: bad exit status '$rc' in $exitfile" >&2; exit 99; }
log "guest script exited $rc (${elapsed}s total boot+run)"
exit "$rc"
