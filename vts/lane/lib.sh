# Shared by the scripts that fetch and build the lanes' kernels (sourced, not run; bash):
# the cache root, the Debian mirror the host already uses, and one private apt state per suite
# (never the host's /etc/apt), used by debian-kernel.sh (Debian's kernel packages) and
# kernel/build.sh (Debian's kernel source) alike.
#
# Environment: XDG_CACHE_HOME (cache root, default ~/.cache), CT_DEBIAN_MIRROR (default: the
# first enabled non-security "deb" URI of the host's apt sources), CT_DEBIAN_SUITE (default
# trixie-backports).

CT_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/chargetransfer
CT_SUITE=${CT_DEBIAN_SUITE:-trixie-backports}
CT_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# ct_mirror: prints the Debian mirror, or fails when none is found.
ct_mirror() {
    if [[ -n ${CT_DEBIAN_MIRROR:-} ]]; then echo "${CT_DEBIAN_MIRROR%/}"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # deb822: the first non-security URI of an enabled stanza of type "deb".
        uri=$(awk '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    if (line ~ /^Types:/)   { sub(/^Types:[ \t]*/, "", line); types = line }
                    if (line ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", line); uris = line }
                    if (line ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", line); enabled = tolower(line) }
                }
                if (enabled == "no" || types !~ /(^| )deb( |$)/) next
                n = split(uris, u, /[ \t]+/)
                for (j = 1; j <= n; j++) if (u[j] ~ /^[a-z]+:\/\// && u[j] !~ /security/) { print u[j]; exit }
            }' "$f")
        [[ -n $uri ]] && { echo "${uri%/}"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } break } }' "$f")
        [[ -n $uri ]] && { echo "${uri%/}"; return; }
    done
    return 1
}

# ct_apt_setup: the private apt state of $CT_SUITE under $CT_CACHE/apt/$CT_SUITE; exports
# APT_CONFIG, so apt-get and apt-cache use it. Sources are written by ct_apt_update.
ct_apt_setup() {
    CT_APTDIR=$CT_CACHE/apt/$CT_SUITE
    mkdir -p "$CT_APTDIR"/{etc/sources.list.d,etc/preferences.d,etc/apt.conf.d,lists/partial,cache/archives/partial,state}
    [[ -f $CT_APTDIR/state/status ]] || : >"$CT_APTDIR/state/status"
    # The dmem kernel build kept its own lists in apt-<suite>/ before this library: a cache that
    # only has those keeps them (and so the source version its build is keyed on).
    local legacy=$CT_CACHE/apt-$CT_SUITE/lists
    if ! ct_have_lists && compgen -G "$legacy/*_Packages*" >/dev/null; then
        cp -p "$legacy"/*_InRelease "$legacy"/*_Packages* "$CT_APTDIR/lists/" 2>/dev/null || true
    fi
    cat >"$CT_APTDIR/apt.conf" <<CONF
Dir::Etc "$CT_APTDIR/etc";
Dir::Etc::main "/dev/null";
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$CT_APTDIR/etc/sources.list.d";
Dir::Etc::parts "$CT_APTDIR/etc/apt.conf.d";
Dir::Etc::preferencesparts "$CT_APTDIR/etc/preferences.d";
Dir::State "$CT_APTDIR/state";
Dir::State::lists "$CT_APTDIR/lists";
Dir::State::status "$CT_APTDIR/state/status";
Dir::Cache "$CT_APTDIR/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
CONF
    export APT_CONFIG=$CT_APTDIR/apt.conf
}

# ct_have_lists: whether the private package lists were fetched.
ct_have_lists() {
    compgen -G "$CT_CACHE/apt/$CT_SUITE/lists/*_Packages*" >/dev/null
}

# ct_apt_update: writes the sources (mirror, suite, keyring) and fetches the package lists.
ct_apt_update() {
    local mirror
    mirror=$(ct_mirror) || { echo "no Debian mirror found in the host's apt sources (set CT_DEBIAN_MIRROR)" >&2; return 1; }
    [[ -r $CT_KEYRING ]] || { echo "missing $CT_KEYRING (install debian-archive-keyring)" >&2; return 1; }
    cat >"$CT_APTDIR/etc/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $CT_SUITE
Components: main
Signed-By: $CT_KEYRING
SRC
    rm -f "$CT_APTDIR/etc/sources.list.d/kernel.sources"
    # Both kernel scripts share these lists; one update at a time.
    flock "$CT_APTDIR/.lock" apt-get -qq update >&2
}

# ct_download DIR PACKAGE...: apt-get download into DIR.
ct_download() {
    local dir=$1
    shift
    (cd "$dir" && apt-get -qq download "$@" >&2)
}

# ct_publish STAGED DEST: puts a finished file or directory in place in one rename, so a reader
# (another lane, an interrupted run) never sees half of it.
ct_publish() {
    rm -rf "${2:?}"
    mv "$1" "$2"
}

# ct_debian_kernel: runs debian-kernel.sh and sets KERNEL and MODULES from its output; fails
# when it fails or names no kernel (its reason is on stderr).
ct_debian_kernel() {
    local out
    out=$("$(dirname "${BASH_SOURCE[0]}")/debian-kernel.sh") || return 1
    KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$out")
    MODULES=$(sed -n 's/^MODULES=//p' <<<"$out")
    [[ -n $KERNEL && -n $MODULES ]] || { echo "debian-kernel.sh named no kernel" >&2; return 1; }
}
