#!/usr/bin/env bash
# Fetch Debian's newest amd64 kernel (default suite: trixie-backports) with a
# PRIVATE apt configuration (never touches /etc/apt), unpack it into a cache and
# run depmod. Cached: once a kernel is unpacked, later runs do no network.
#
# Usage: debian-kernel.sh [--refresh] [--abi ABI]
#   --refresh   ask the archive for the newest ABI even if one is cached
#   --abi ABI   use this ABI (e.g. 7.3.4+deb13-amd64); network only if not cached
# Env: DEBIAN_KERNEL_SUITE (default trixie-backports),
#      DEBIAN_MIRROR (default: the first non-security URIs of the host's apt sources),
#      XDG_CACHE_HOME (cache root, default ~/.cache).
# Output (stdout, last four lines):
#   KERNEL=<vmlinuz>  MODULES=<root with lib/modules/ABI and usr/lib/modules/ABI>
#   ABI=<abi>         CONFIG=<kernel config file>
# Progress goes to stderr. Exit 0 on success; 1 with a one-line "debian-kernel: ..." reason.
set -euo pipefail

die() { echo "debian-kernel: $*" >&2; exit 1; }
log() { echo "debian-kernel: $*" >&2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=${DEBIAN_KERNEL_SUITE:-trixie-backports}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/chargetransfer
APTDIR=$CACHE/apt/$SUITE
KDIR=$CACHE/debian-kernel
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

refresh=0
abi=
while (($#)); do
    case $1 in
        --refresh) refresh=1 ;;
        --abi) abi=${2:?--abi needs a value}; shift ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
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
[[ -r $KEYRING ]] || die "missing $KEYRING (install debian-archive-keyring)"

# The mirror: whatever the host's own apt sources use (deb822 or one-line format).
mirror=${DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
fi
if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } break } }')
fi
[[ -n $mirror ]] || die "no Debian mirror found in /etc/apt sources (set DEBIAN_MIRROR)"

# Private apt configuration.
mkdir -p "$APTDIR"/{etc/sources.list.d,etc/preferences.d,etc/apt.conf.d,lists/partial,cache/archives/partial,state}
: >"$APTDIR/state/status"
cat >"$APTDIR/etc/sources.list.d/kernel.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $SUITE
Components: main
Signed-By: $KEYRING
SRC
cat >"$APTDIR/apt.conf" <<CONF
Dir::Etc "$APTDIR/etc";
Dir::Etc::main "/dev/null";
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$APTDIR/etc/sources.list.d";
Dir::Etc::parts "$APTDIR/etc/apt.conf.d";
Dir::Etc::preferencesparts "$APTDIR/etc/preferences.d";
Dir::State "$APTDIR/state";
Dir::State::lists "$APTDIR/lists";
Dir::State::status "$APTDIR/state/status";
Dir::Cache "$APTDIR/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
CONF
export APT_CONFIG=$APTDIR/apt.conf

log "updating private package lists for $SUITE"
apt-get -qq update >&2 || die "apt-get update of $SUITE from $mirror failed"

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
(cd "$work/debs" && apt-get -qq download "${debs[@]}" >&2) || die "apt-get download ${debs[*]} failed"
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
rm -rf "${KDIR:?}/$abi"
mv "$root" "$KDIR/$abi"
echo "$abi" >"$KDIR/latest-$SUITE"
log "unpacked into $KDIR/$abi"
emit "$KDIR/$abi" "$abi"
