#!/usr/bin/env bash
# Builds the static binaries the kernel lanes run (the service, chargectl, the VTS suite, and
# rsbinder's service manager rsb_hub) and prints BIN_DIR=<dir>. glibc with crt-static needs no
# extra toolchain download; rsb_hub is built once per version under ~/.cache. The BPF scan
# backend's object is compiled by build.rs with Debian's clang (installed here when missing);
# CHARGETRANSFER_BPF=required makes a build without it fail instead of leaving it out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=x86_64-unknown-linux-gnu
export RUSTFLAGS="-C target-feature=+crt-static"
"$root/vts/lane/host-deps.sh" clang >&2
export CHARGETRANSFER_BPF=required
cargo build --release --locked --target "$target" --workspace --bins >&2
bin="$root/target/$target/release"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/chargetransfer/tools/rsbinder-tools-0.12.0"
if [ ! -x "$tools/bin/rsb_hub" ]; then
    cargo install rsbinder-tools@0.12.0 --locked --target "$target" --root "$tools" >&2
fi
cp "$tools/bin/rsb_hub" "$bin/rsb_hub"
# The C allocator of the allocator outage run, linked with the C ABI's static archive (vts/cabi).
cargo build --release --locked --target "$target" -p chargetransfer-cabi --lib >&2
gcc -static -std=c11 -D_GNU_SOURCE -O2 -I vts/cabi/include -o "$bin/ct-c-allocator" vts/cabi/tests/allocator.c \
    "$bin/libchargetransfer_cabi.a" -lpthread -ldl -lm 2> >(grep -v -e "statically linked applications" -e "in function" >&2)
for b in chargetransferd chargectl chargetransfer-vts rsb_hub ct-c-allocator; do
    if readelf -l "$bin/$b" | grep -q INTERP; then echo "build-guest: $b is not static" >&2; exit 1; fi
done
echo "BIN_DIR=$bin"
