#!/usr/bin/env bash
# Idempotently install the host packages the kernel lane needs.
# Fast no-op (one dpkg-query) when everything is present.
# Usage: host-deps.sh [EXTRA_PACKAGE...]
# Exit: 0 all present/installed; non-zero with a one-line reason otherwise.
set -euo pipefail

# qemu-system-x86: the emulator; busybox-static: guest userland;
# kmod: depmod/modinfo; xz-utils: .ko.xz and .deb payloads; cpio: initramfs;
# e2fsprogs: mkfs.ext4 for the virtio-blk fallback share.
pkgs=(qemu-system-x86 busybox-static kmod xz-utils cpio e2fsprogs "$@")

missing=()
for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ "$status" == ii* ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "host-deps: missing packages ${missing[*]} and not root; run: apt-get install ${missing[*]}" >&2
    exit 1
fi

echo "host-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Only refresh the lists when the install cannot be satisfied from them.
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null || { echo "host-deps: apt-get update failed" >&2; exit 1; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { echo "host-deps: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
echo "host-deps: ok" >&2
