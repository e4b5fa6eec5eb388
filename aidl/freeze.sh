#!/usr/bin/env bash
# Freezes the current AIDL as version N under aidl/aidl_api/<package>/N with the hash Soong's
# aidl_interface computes: sha1 of (sha1sum of the sorted .aidl files, then the previous version,
# or "latest-version" for version 1), and refreshes the `current` dump Soong compares against.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pkg=vendor.chargetransfer
version=${1:?usage: freeze.sh VERSION}
dest="$here/aidl_api/$pkg/$version"
rm -rf "$dest"
mkdir -p "$dest/vendor/chargetransfer"
cp "$here"/vendor/chargetransfer/*.aidl "$dest/vendor/chargetransfer/"
if [ "$version" -gt 1 ]; then prev=$((version - 1)); else prev=latest-version; fi
hash=$(cd "$dest" && { find ./ -name "*.aidl" -print0 | LC_ALL=C sort -z | xargs -0 sha1sum && echo "$prev"; } | sha1sum | cut -d ' ' -f 1)
echo "$hash" > "$dest/.hash"
current="$here/aidl_api/$pkg/current"
rm -rf "$current"
mkdir -p "$current/vendor/chargetransfer"
cp "$here"/vendor/chargetransfer/*.aidl "$current/vendor/chargetransfer/"
echo "frozen $pkg version $version: $hash"
