#!/usr/bin/env bash
# Build the "dmem kernel" for the VM test lane: Debian's own linux-source-7.x
# (trixie-backports) + x86_64_defconfig + kvm_guest.config + vts/kernel/dmem.config,
# patched with vts/kernel/cma-dmem.patch (CMA areas register a dmem region
# `cma/<area>`, the CMA dma-buf heap charges it).
#
# Usage: vts/kernel/build.sh [--fetch-only] [--force]
#   --fetch-only  stop after the source tree is extracted and patched (no config/build)
#   --force       rebuild even if the output for this cache key exists
# Environment:
#   XDG_CACHE_HOME, CT_DEBIAN_SUITE, CT_DEBIAN_MIRROR: the cache root, the Debian suite
#                           and mirror, shared with debian-kernel.sh (see vts/lane/lib.sh)
#   CT_KERNEL_SOURCE_PKG    source package (default linux-source-7.3; if the suite
#                           does not have it, the newest linux-source-7.x is used)
#   CT_KERNEL_REFRESH=1     refresh the private apt lists even if present
#   CT_KERNEL_JOBS          make -j (default nproc)
#   CT_KERNEL_VERBOSE=1     stream make output to stderr instead of a log file
#
# Progress goes to stderr; stdout ends with VRAMSIM_KO=<path> (vts/kernel/vramsim, the
# simulated-VRAM test module) and, last, BZIMAGE=<path>.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=vts/lane/lib.sh
. "$HERE/../lane/lib.sh"
FRAGMENT=$HERE/dmem.config
PATCH=$HERE/cma-dmem.patch
VRAMSIM=$HERE/vramsim   # the simulated-VRAM test module, built against the tree
CACHE=$CT_CACHE
SUITE=$CT_SUITE
WANT_PKG=${CT_KERNEL_SOURCE_PKG:-linux-source-7.3}
JOBS=${CT_KERNEL_JOBS:-$(nproc)}
# Everything in the recipe that changes the output but is not in the fragment or the
# patch. Bump "recipe-N" when the steps below change in a way that matters.
RECIPE="recipe-2 defconfig=x86_64_defconfig extra=kvm_guest.config target=bzImage+modules arch=x86_64"
DEPS=(build-essential bc bison flex libelf-dev libssl-dev xz-utils python3 cpio kmod patch)

FETCH_ONLY=0
FORCE=0
for a in "$@"; do
    case $a in
        --fetch-only) FETCH_ONLY=1 ;;
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument: $a" >&2; exit 2 ;;
    esac
done

log() { printf '[kernel] %s\n' "$*" >&2; }
die() { printf '[kernel] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }
T0=$(now)

[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"
[ -f "$PATCH" ] || die "missing $PATCH"
mkdir -p "$CACHE/dmem-kernel"

# One build at a time per cache (test lanes may call this concurrently).
if command -v flock >/dev/null; then
    exec 9>"$CACHE/dmem-kernel/.lock"
    flock 9 || die "cannot lock $CACHE/dmem-kernel/.lock"
fi

# ---------------------------------------------------------------- private apt
ct_apt_setup
apt_update() {
    log "apt-get update ($SUITE, private lists in $CT_APTDIR)"
    ct_apt_update
}
if [ "${CT_KERNEL_REFRESH:-0}" = 1 ] || ! ct_have_lists; then
    apt_update || ct_have_lists || die "apt-get update for $SUITE failed"
fi

pkg_version() { # newest version of $1 in the private lists, empty if none
    apt-cache show "$1" 2>/dev/null | awk '/^Version:/ { print $2 }' | sort -V | tail -n1
}
resolve_pkg() {
    PKG=$WANT_PKG
    VERSION=$(pkg_version "$PKG")
    if [ -z "$VERSION" ] && [ -z "${CT_KERNEL_SOURCE_PKG:-}" ]; then
        PKG=$(apt-cache pkgnames linux-source-7. 2>/dev/null | grep -E '^linux-source-7\.[0-9]+$' | sort -V | tail -n1 || true)
        [ -n "$PKG" ] && VERSION=$(pkg_version "$PKG")
        [ -n "$VERSION" ] && log "WARNING: $WANT_PKG not in $SUITE, using $PKG $VERSION (the patch targets 7.3)"
    fi
}
resolve_pkg
if [ -z "$VERSION" ]; then
    apt_update || true
    resolve_pkg
fi
[ -n "$VERSION" ] || die "no $WANT_PKG (nor any linux-source-7.x) in $SUITE"
VSAFE=${VERSION//[:\/]/_}

# ---------------------------------------------------------------- cache key
KEY_HASH=$( { echo "$RECIPE"; echo "$PKG $VERSION"; echo "--- fragment"; cat "$FRAGMENT"; echo "--- patch"; cat "$PATCH"; echo "--- vramsim"; cat "$VRAMSIM"/Kbuild "$VRAMSIM"/*.[ch]; } | sha256sum | cut -c1-16)
KEY="$VSAFE-$KEY_HASH"
OUT=$CACHE/dmem-kernel/$KEY
if [ "$FORCE" = 0 ] && [ "$FETCH_ONLY" = 0 ] && [ -s "$OUT/bzImage" ] && [ -s "$OUT/vramsim.ko" ]; then
    log "cache hit: $KEY"
    echo "VRAMSIM_KO=$OUT/vramsim.ko"
    echo "BZIMAGE=$OUT/bzImage"
    exit 0
fi
log "source $PKG $VERSION, cache key $KEY"

# ---------------------------------------------------------------- build deps
missing=()
for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing build deps: ${missing[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    # The host's apt, not the private one APT_CONFIG points at.
    env -u APT_CONFIG $SUDO apt-get -q update >&2 || true
    env -u APT_CONFIG DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# ---------------------------------------------------------------- fetch + extract
WORK=$CACHE/dmem-kernel/work/$PKG-$VSAFE   # one source/build tree per source version
SRC=$WORK/src
BUILD=$WORK/build
PRISTINE=$WORK/pristine                    # pristine copies of files the patches touch
mkdir -p "$WORK"
if [ ! -f "$WORK/.extracted" ]; then
    DEBDIR=$CACHE/debs
    mkdir -p "$DEBDIR"
    deb_path() { compgen -G "$DEBDIR/${PKG}_${VERSION#*:}_*.deb" | head -n1 || true; }
    DEB=$(deb_path)
    if [ -z "$DEB" ]; then
        log "apt-get download $PKG=$VERSION"
        ct_download "$DEBDIR" "$PKG=$VERSION" || {
            apt_update || true
            ct_download "$DEBDIR" "$PKG=$VERSION"
        } || die "apt-get download $PKG=$VERSION failed"
        DEB=$(deb_path)
        [ -n "$DEB" ] || die "apt-get download left no ${PKG}_${VERSION#*:}_*.deb in $DEBDIR"
    fi
    log "extracting $(basename "$DEB")"
    rm -rf "$SRC" "$BUILD" "$PRISTINE" "$WORK/applied.patch" "$WORK/src.tmp"
    mkdir -p "$WORK/src.tmp"
    TARBALL=./usr/src/$PKG.tar.xz
    dpkg-deb --fsys-tarfile "$DEB" | tar -xOf - "$TARBALL" | tar -xJf - -C "$WORK/src.tmp" \
        || die "cannot extract $TARBALL from $DEB"
    top=$(ls "$WORK/src.tmp")
    [ -f "$WORK/src.tmp/$top/Makefile" ] || die "unexpected tarball layout: $top"
    mv "$WORK/src.tmp/$top" "$SRC"
    rmdir "$WORK/src.tmp"
    touch "$WORK/.extracted"
    log "extracted in $(( $(now) - T0 ))s"
fi

# ---------------------------------------------------------------- patch
patch_files() { # paths (-p1) a unified diff touches
    sed -n -e 's/^+++ \([^\t ]*\).*/\1/p' -e 's/^--- \([^\t ]*\).*/\1/p' "$1" \
        | grep -v '^/dev/null$' | sed 's|^[^/]*/||' | sort -u
}
save_pristine() { # keep a pristine copy of each listed file before any patch touches it
    local f
    for f in "$@"; do
        [ -f "$PRISTINE/$f" ] || [ -f "$PRISTINE/$f.absent" ] || {
            mkdir -p "$(dirname "$PRISTINE/$f")"
            if [ -f "$SRC/$f" ]; then cp -p "$SRC/$f" "$PRISTINE/$f"; else touch "$PRISTINE/$f.absent"; fi
        }
    done
}
if [ -f "$WORK/applied.patch" ] && cmp -s "$WORK/applied.patch" "$PATCH"; then
    log "patch already applied"
else
    # The patch is applied to pristine copies in a staging dir; only files whose
    # content differs from the tree are then replaced (unchanged files keep their
    # mtime, so make recompiles only what the patch change really touched). Files the
    # previously applied patch touched and the new one does not go back to pristine.
    old_files=()
    if [ -f "$WORK/applied.patch" ]; then mapfile -t old_files < <(patch_files "$WORK/applied.patch"); fi
    mapfile -t new_files < <(patch_files "$PATCH")
    save_pristine "${new_files[@]}"
    STAGE=$WORK/patch-stage
    rm -rf "$STAGE"; mkdir -p "$STAGE"
    for f in "${new_files[@]}"; do
        [ -f "$PRISTINE/$f" ] || continue
        mkdir -p "$(dirname "$STAGE/$f")"; cp "$PRISTINE/$f" "$STAGE/$f"
    done
    log "applying $(basename "$PATCH")"
    if [ ${#new_files[@]} -gt 0 ] && ! patch -d "$STAGE" -p1 --batch --forward --no-backup-if-mismatch <"$PATCH" >&2; then
        die "$(basename "$PATCH") does not apply to $PKG $VERSION (tree left as it was)"
    fi
    rm -f "$WORK/applied.patch"
    changed=0
    for f in $(printf '%s\n' "${old_files[@]}" "${new_files[@]}" | sort -u); do
        if printf '%s\n' "${new_files[@]}" | grep -qxF -- "$f"; then
            want=$STAGE/$f                                   # patched (absent: deleted)
        elif [ -f "$PRISTINE/$f" ]; then
            want=$PRISTINE/$f                                # back to pristine
        elif [ -f "$PRISTINE/$f.absent" ]; then
            want=                                            # created by the old patch only
        else
            log "WARNING: no pristine copy of $f, leaving it as is"; continue
        fi
        if [ -n "$want" ] && [ -f "$want" ]; then
            cmp -s "$want" "$SRC/$f" || { mkdir -p "$(dirname "$SRC/$f")"; cp "$want" "$SRC/$f"; changed=$((changed + 1)); }
        elif [ -e "$SRC/$f" ]; then
            rm -f "$SRC/$f"; changed=$((changed + 1))
        fi
    done
    rm -rf "$STAGE"
    cp "$PATCH" "$WORK/applied.patch"
    log "patch applied ($changed file(s) changed in the tree)"
fi
if [ "$FETCH_ONLY" = 1 ]; then
    log "source tree: $SRC"
    exit 0
fi

# ---------------------------------------------------------------- configure
run_make() { # run_make LOGFILE make-args...
    local logf=$1; shift
    if [ "${CT_KERNEL_VERBOSE:-0}" = 1 ]; then
        nice -n 10 make -C "$SRC" "$@" 2>&1 | tee "$logf" >&2; return "${PIPESTATUS[0]}"
    fi
    nice -n 10 make -C "$SRC" "$@" >"$logf" 2>&1 || { tail -n 60 "$logf" >&2; log "full log: $logf"; return 1; }
}
export KBUILD_BUILD_USER=chargetransfer KBUILD_BUILD_HOST=vts
CFG=$WORK/config-gen
rm -rf "$CFG"; mkdir -p "$CFG"
KVM_FRAG=
for f in kernel/configs/kvm_guest.config arch/x86/configs/kvm_guest.config; do
    [ -f "$SRC/$f" ] && { KVM_FRAG=$f; break; }
done
[ -n "$KVM_FRAG" ] || die "kvm_guest.config not found in $SRC"
run_make "$WORK/config.log" O="$CFG" x86_64_defconfig || die "make x86_64_defconfig failed"
( cd "$SRC" && scripts/kconfig/merge_config.sh -m -O "$CFG" "$CFG/.config" "$KVM_FRAG" "$FRAGMENT" ) >>"$WORK/config.log" 2>&1 \
    || { tail -n 30 "$WORK/config.log" >&2; die "merge_config.sh failed"; }
run_make "$WORK/config-olddef.log" O="$CFG" olddefconfig || die "make olddefconfig failed"

# Every option in the fragment must have survived olddefconfig.
bad=()
while IFS= read -r line; do
    case $line in
        CONFIG_*=*)
            grep -qxF -- "$line" "$CFG/.config" || bad+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$CFG/.config" || echo unset))") ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            ! grep -q "^$opt=" "$CFG/.config" || bad+=("$line (got: $(grep "^$opt=" "$CFG/.config"))") ;;
    esac
done <"$FRAGMENT"
if [ ${#bad[@]} -gt 0 ]; then
    printf '[kernel] option did not stick: %s\n' "${bad[@]}" >&2
    die "${#bad[@]} fragment option(s) not set in the final .config (see $CFG/.config)"
fi
mkdir -p "$BUILD"
if ! cmp -s "$CFG/.config" "$BUILD/.config"; then
    log "config changed, installing new .config"
    cp "$CFG/.config" "$BUILD/.config"
fi

# ---------------------------------------------------------------- build
log "make -j$JOBS bzImage modules (nice 10; log $WORK/build.log)"
TB=$(now)
# `modules` as well: it writes Module.symvers, which modpost needs for vts/kernel/vramsim.
run_make "$WORK/build.log" O="$BUILD" -j"$JOBS" bzImage modules || die "kernel build failed"
log "make took $(( $(now) - TB ))s"
# The module is built from a copy, so the repository's directory gets no build products.
MODSRC=$WORK/vramsim
rm -rf "$MODSRC"; mkdir -p "$MODSRC"
cp "$VRAMSIM"/Kbuild "$VRAMSIM"/*.[ch] "$MODSRC/"
run_make "$WORK/vramsim.log" O="$BUILD" M="$MODSRC" modules || die "vramsim module build failed"

mkdir -p "$OUT"
cp "$BUILD/arch/x86/boot/bzImage" "$OUT/bzImage.tmp"
cp "$BUILD/.config" "$OUT/config"
cp "$PATCH" "$OUT/cma-dmem.patch"
cp "$MODSRC/vramsim.ko" "$OUT/vramsim.ko"
printf 'package=%s\nversion=%s\nkernelrelease=%s\nkey=%s\n' "$PKG" "$VERSION" \
    "$(cat "$BUILD/include/config/kernel.release" 2>/dev/null || echo unknown)" "$KEY" >"$OUT/info"
ct_publish "$OUT/bzImage.tmp" "$OUT/bzImage"
log "done in $(( $(now) - T0 ))s"
echo "VRAMSIM_KO=$OUT/vramsim.ko"
echo "BZIMAGE=$OUT/bzImage"
