#!/usr/bin/env bash
# Freezes the current AIDL as version N under aidl/aidl_api/<package>/N with the hash AOSP's
# aidl_interface computes: sha1 of (sha1sum of the sorted .aidl files, then the version).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pkg=android.hardware.chargetransfer
version=${1:?usage: freeze.sh VERSION}
dest="$here/aidl_api/$pkg/$version"
rm -rf "$dest"
mkdir -p "$dest/android/hardware/chargetransfer"
cp "$here"/android/hardware/chargetransfer/*.aidl "$dest/android/hardware/chargetransfer/"
hash=$(cd "$dest" && { find ./ -name "*.aidl" -print0 | LC_ALL=C sort -z | xargs -0 sha1sum && echo "$version"; } | sha1sum | cut -d ' ' -f 1)
echo "$hash" > "$dest/.hash"
echo "frozen $pkg version $version: $hash"
