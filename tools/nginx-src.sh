#!/bin/bash
# Fetches an nginx source tree from Debian's archive and prints its path.
#
#   tools/nginx-src.sh trixie      Debian 13's nginx (1.26)
#   tools/nginx-src.sh sid         Debian unstable's (nginx.org's stable line)
#   tools/nginx-src.sh 1.30        the newest 1.30.x either of them has
#                                  (or 1.26.3, or a Debian version 1.30.6-2)
#
# The tree is nginx's own source (the .orig tarball of Debian's source
# package, which is nginx.org's release tarball; Debian's patches are not
# applied), unpacked into $NGINX_SRC_CACHE/nginx-VERSION (default
# build/src/); make NGINX_SRC=<that path> builds against it.
#
# apt runs on a private state of its own in $NGINX_SRC_CACHE/apt: a deb-src
# entry for trixie and sid, its own lists, no change to /etc/apt, so nothing
# ever installs or upgrades from trixie or sid.  apt checks the index's
# signature (debian-archive-keyring); the .orig tarball is checked against
# the SHA-256 that signed index gives (apt-helper), and against the .dsc's
# when the archive serves the .dsc, before it is unpacked.  Needs apt, curl-free; works as root on
# a fresh Debian 12 (CI) and as any user.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${NGINX_SRC_CACHE:-$ROOT/build/src}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
want=${1:?usage: tools/nginx-src.sh trixie|sid|VERSION}

say() { echo "nginx-src: $*" >&2; }

[ -r "$KEYRING" ] || { say "no $KEYRING (apt install debian-archive-keyring)"; exit 1; }

apt_dir=$CACHE/apt
mkdir -p "$apt_dir/sources" "$apt_dir/empty" "$apt_dir/lists/partial" \
         "$apt_dir/cache/archives/partial" "$CACHE/dl"

cat > "$apt_dir/sources/debian-src.sources" <<EOF
Types: deb-src
URIs: $MIRROR
Suites: trixie sid
Components: main
Signed-By: $KEYRING
EOF

apt_opts=(-q -o "Dir::Etc::SourceList=/dev/null"
          -o "Dir::Etc::SourceParts=$apt_dir/sources"
          -o "Dir::State::Lists=$apt_dir/lists"
          -o "Dir::Cache=$apt_dir/cache"
          -o "Debug::NoLocking=1")
# as root apt downloads as _apt, who may not write into a checkout in /root
[ "$(id -u)" != 0 ] || apt_opts+=(-o "APT::Sandbox::User=root")

# the indexes, at most a day old
stamp=$apt_dir/updated
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ]; then
    say "updating the private deb-src index (trixie, sid) in $apt_dir"
    apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 \
        || { cat "$apt_dir/update.log" >&2; exit 1; }
    touch "$stamp"
fi

# which Debian version
versions=$(apt-cache "${apt_opts[@]}" showsrc nginx 2>/dev/null \
           | sed -n 's/^Version: //p' | sort -ruV)
case "$want" in
trixie|sid)
    spec="nginx/$want" ;;
unstable)
    spec=nginx/sid ;;
[0-9]*-*)
    spec="nginx=$want" ;;
[0-9]*)
    v=$(echo "$versions" | grep -E "^${want//./\\.}([.-]|$)" | head -1) \
        || true
    if [ -z "$v" ]; then
        say "no nginx $want in trixie or sid; there are:" $versions
        exit 1
    fi
    spec="nginx=$v" ;;
*)
    say "usage: tools/nginx-src.sh trixie|sid|VERSION"; exit 1 ;;
esac

# from_git VERSION-PREFIX: the newest release tag of $NGINX_GIT under it
from_git() {
    local tag v dest
    [ -n "${NGINX_GIT:-}" ] || return 1
    tag=$(git -C "$NGINX_GIT" tag -l "release-$1*" | sort -rV \
          | grep -E "^release-${1//./\\.}([.]|$)" | head -1) || true
    [ -n "$tag" ] || { say "no tag release-$1* in $NGINX_GIT"; return 1; }
    v=${tag#release-}
    dest=$CACHE/nginx-$v
    if [ ! -f "$dest/.cloudauth-src" ]; then
        rm -rf "$dest" "$dest.tmp" && mkdir -p "$dest.tmp"
        git -C "$NGINX_GIT" archive "$tag" | tar -C "$dest.tmp" -xf -
        # the release tarball has auto/configure at the top as configure
        [ -f "$dest.tmp/configure" ] || cp "$dest.tmp/auto/configure" \
                                           "$dest.tmp/configure"
        echo "git $NGINX_GIT $tag $(git -C "$NGINX_GIT" rev-parse "$tag")" \
            > "$dest.tmp/.cloudauth-src"
        mv "$dest.tmp" "$dest"
        say "nginx $v in $dest (from $NGINX_GIT, tag $tag)"
    fi
    echo "$dest"
}

uris=$(cd "$apt_dir/empty" && apt-get "${apt_opts[@]}" source --print-uris "$spec" \
       2>/dev/null) || { say "apt-get source $spec: not found"; exit 1; }
dsc=$(echo "$uris" | sed -n "s/^'[^']*' \([^ ]*\.dsc\) .*/\1/p")
orig=$(echo "$uris" | sed -n "s/^'[^']*' \([^ ]*\.orig\.tar\.[a-z0-9]*\) .*/\1/p")
[ -n "$dsc" ] && [ -n "$orig" ] || { say "no .dsc/.orig for $spec"; exit 1; }
upstream=${orig#nginx_}
upstream=${upstream%.orig.tar.*}
dest=$CACHE/nginx-$upstream

if [ -f "$dest/.cloudauth-src" ]; then
    echo "$dest"
    exit 0
fi

# the .orig tarball (and the .dsc when served), each checked by apt-helper
# against the SHA-256 of the signed index
field() { echo "$uris" | awk -v f="$1" '$2 == f { print $1 "\t" $4 }' \
          | tr -d "'"; }
fetch() {
    local uri hash
    read -r uri hash <<<"$(field "$1")"
    [ -f "$CACHE/dl/$1" ] && echo "${hash#SHA256:}  $CACHE/dl/$1" \
        | sha256sum -c --quiet - >/dev/null 2>&1 && return 0
    /usr/lib/apt/apt-helper -o "Acquire::Retries=2" download-file \
        "$uri" "$CACHE/dl/$1" "$hash" >"$CACHE/dl/fetch.log" 2>&1
}

say "downloading $spec ($orig)"
if ! fetch "$orig"; then
    grep -E '^(E|Err)' "$CACHE/dl/fetch.log" >&2 || cat "$CACHE/dl/fetch.log" >&2
    say "Debian's archive lists $spec but does not serve $orig here"
    case "$want" in
    trixie|sid|unstable) from_git "${upstream%.*}" && exit 0 ;;
    [0-9]*-*) from_git "$upstream" && exit 0 ;;
    *) from_git "$want" && exit 0 ;;
    esac
    [ -n "${NGINX_GIT:-}" ] \
        || say "NGINX_GIT=/path/to/a/clone/of/nginx takes its release tag instead"
    exit 2
fi
sum=$(field "$orig" | sed 's/.*SHA256://')

# and against the .dsc's own checksum, when the archive serves the .dsc
if fetch "$dsc"; then
    dsum=$(awk -v f="$orig" '/^Checksums-Sha256:/ { s = 1; next }
                             /^[^ ]/ { s = 0 }
                             s && $3 == f { print $1 }' "$CACHE/dl/$dsc")
    [ "$dsum" = "$sum" ] \
        || { say "$orig: SHA-256 differs from $dsc's"; exit 1; }
else
    say "no $dsc served here: $orig checked against the signed index only"
fi

rm -rf "$dest" "$dest.tmp"
mkdir -p "$dest.tmp"
tar -C "$dest.tmp" --strip-components=1 -xf "$CACHE/dl/$orig"
[ -f "$dest.tmp/src/core/nginx.h" ] || { say "$orig: no nginx tree"; exit 1; }
echo "$spec $dsc $orig sha256:$sum" > "$dest.tmp/.cloudauth-src"
mv "$dest.tmp" "$dest"
say "nginx $upstream in $dest"
echo "$dest"
