#!/usr/bin/env bash
# Freezes the current AIDL as version N: writes the API dump `aidl --dumpapi` would write
# (aidl/dumpapi.py) to aidl/aidl_api/<package>/N with the hash Soong's aidl_interface computes:
# sha1 of (sha1sum of the sorted dump files, then the previous version, or "latest-version" for
# version 1). Also rewrites the `current` dump Soong compares the sources against.
# After a new version, add it to versions_with_info in aidl/Android.bp and to the VINTF files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pkg=vendor.chargetransfer
version=${1:?usage: freeze.sh VERSION}
sources=("$here"/vendor/chargetransfer/*.aidl)
for dir in "$version" current; do
    rm -rf "${here:?}/aidl_api/$pkg/$dir"
    python3 "$here/dumpapi.py" "$here/aidl_api/$pkg/$dir" "${sources[@]}"
done
dest="$here/aidl_api/$pkg/$version"
if [ "$version" -gt 1 ]; then prev=$((version - 1)); else prev=latest-version; fi
hash=$(cd "$dest" && { find ./ -name "*.aidl" -print0 | LC_ALL=C sort -z | xargs -0 sha1sum && echo "$prev"; } | sha1sum | cut -d ' ' -f 1)
echo "$hash" > "$dest/.hash"
echo "frozen $pkg version $version: $hash"
