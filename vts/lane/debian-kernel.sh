#!/usr/bin/env bash
# Fetch Debian's newest amd64 kernel (default suite: trixie-backports) with a
# PRIVATE apt configuration (never touches /etc/apt), unpack it into a cache and
# run depmod. Cached: once a kernel is unpacked, later runs do no network.
#
# Usage: debian-kernel.sh [--refresh] [--abi ABI]
#   --refresh   ask the archive for the newest ABI even if one is cached
#   --abi ABI   use this ABI (e.g. 7.3.4+deb13-amd64); network only if not cached
# Env: CT_DEBIAN_SUITE (default trixie-backports), CT_DEBIAN_MIRROR, XDG_CACHE_HOME: see lib.sh.
# Output (stdout, last four lines):
#   KERNEL=<vmlinuz>  MODULES=<root with lib/modules/ABI and usr/lib/modules/ABI>
#   ABI=<abi>         CONFIG=<kernel config file>
# Progress goes to stderr. Exit 0 on success; 1 with a one-line "debian-kernel: ..." reason.
set -euo pipefail

die() { echo "debian-kernel: $*" >&2; exit 1; }
log() { echo "debian-kernel: $*" >&2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=vts/lane/lib.sh
. "$HERE/lib.sh"
SUITE=$CT_SUITE
KDIR=$CT_CACHE/debian-kernel

refresh=0
abi=
while (($#)); do
    case $1 in
        --refresh) refresh=1 ;;
        --abi) abi=${2:?--abi needs a value}; shift ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

emit() { # ROOT ABI
    local root=$1 a=$2 k='' c f
    # linux-binary-unsigned ships vmlinuz.unsigned, linux-binary vmlinuz, 6.x /boot.
    for f in "$root/usr/lib/modules/$a/vmlinuz" "$root/usr/lib/modules/$a/vmlinuz.unsigned" \
        "$root/boot/vmlinuz-$a"; do
        [[ -f $f ]] && { k=$f; break; }
    done
    [[ -n $k ]] || die "no vmlinuz for $a under $root"
    c=$root/boot/config-$a
    [[ -f $c ]] || c=$root/usr/lib/modules/$a/config
    [[ -f $c ]] || die "no kernel config for $a under $root"
    [[ -f $root/lib/modules/$a/modules.dep ]] || die "no modules.dep for $a under $root"
    echo "KERNEL=$k"
    echo "MODULES=$root"
    echo "ABI=$a"
    echo "CONFIG=$c"
}

mkdir -p "$KDIR"
exec 9>"$KDIR/.lock"
flock 9

# Cached answer without network.
if [[ -n $abi && -f $KDIR/$abi/.complete ]]; then
    emit "$KDIR/$abi" "$abi"; exit 0
fi
if [[ -z $abi && $refresh -eq 0 && -f $KDIR/latest-$SUITE ]]; then
    cached=$(cat "$KDIR/latest-$SUITE")
    if [[ -f $KDIR/$cached/.complete ]]; then
        log "using cached $cached (--refresh to look for a newer one)"
        emit "$KDIR/$cached" "$cached"; exit 0
    fi
fi

"$HERE/host-deps.sh" || die "host-deps.sh failed"
command -v apt-get >/dev/null || die "apt-get not found"
ct_apt_setup
log "updating private package lists for $SUITE"
ct_apt_update || die "apt-get update of $SUITE failed"

if [[ -z $abi ]]; then
    # Newest plain amd64 image: linux-image-<ver>+debNN-amd64 (not -rt/-cloud/-dbg/-unsigned).
    abi=$(apt-cache pkgnames linux-image- |
        sed -n 's/^linux-image-\([0-9][0-9.]*[^-]*-amd64\)$/\1/p' | sort -V | tail -n1)
    [[ -n $abi ]] || die "no linux-image-*-amd64 package in $SUITE"
fi
log "ABI $abi"

if [[ -f $KDIR/$abi/.complete ]]; then
    echo "$abi" >"$KDIR/latest-$SUITE"
    emit "$KDIR/$abi" "$abi"; exit 0
fi

have() { apt-cache show "$1" >/dev/null 2>&1; }
if have "linux-base-$abi" && have "linux-modules-$abi"; then
    # Split layout (7.x): config / vmlinuz / modules in separate packages.
    bin=linux-binary-unsigned-$abi
    have "$bin" || bin=linux-binary-$abi
    have "$bin" || die "neither linux-binary-unsigned-$abi nor linux-binary-$abi exists"
    debs=("linux-base-$abi" "$bin" "linux-modules-$abi")
else
    # Monolithic layout (6.x): one image package holds everything.
    img=linux-image-$abi-unsigned
    have "$img" || img=linux-image-$abi
    have "$img" || die "no image package for $abi"
    debs=("$img")
fi

work=$KDIR/.tmp-$abi-$$
rm -rf "$work"
mkdir -p "$work/debs" "$work/root"
trap 'rm -rf "$work"' EXIT
log "downloading ${debs[*]}"
ct_download "$work/debs" "${debs[@]}" || die "apt-get download ${debs[*]} failed"
for d in "$work"/debs/*.deb; do
    dpkg-deb -x "$d" "$work/root" || die "dpkg-deb -x $(basename "$d") failed"
done
root=$work/root
# depmod (kmod 30 on bookworm) looks under ROOT/lib/modules; newer packages ship
# /usr/lib/modules. Give both views.
if [[ -d $root/usr/lib/modules/$abi && ! -e $root/lib ]]; then
    ln -s usr/lib "$root/lib"
fi
[[ -d $root/lib/modules/$abi ]] || die "no modules directory for $abi in ${debs[*]}"
depmod -b "$root" "$abi" || die "depmod -b $root $abi failed"
touch "$root/.complete"
ct_publish "$root" "$KDIR/$abi"
echo "$abi" >"$KDIR/latest-$SUITE"
log "unpacked into $KDIR/$abi"
emit "$KDIR/$abi" "$abi"
