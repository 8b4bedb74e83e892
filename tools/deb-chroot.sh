#!/bin/bash
# Builds the Debian package for another Debian release in a chroot of it
# (tools/chroot.sh): make deb-trixie. As root.
#
#   tools/deb-chroot.sh SUITE CHROOT OUT
#
# makes CHROOT with debootstrap when it is not there yet, brings it up to
# date (so the package depends on the ABI of the nginx SUITE has today),
# copies the checkout into CHROOT/build/src, adds a changelog entry
# VERSION+debNN for SUITE (NN: the chroot's Debian major version, so the
# package sorts above the Debian 12 build of the same VERSION), installs the
# Build-Depends of debian/control (apt-get build-dep) and nginx, runs
# dpkg-buildpackage there, and copies the .deb into OUT (its -dbgsym stays in
# CHROOT/build). The build log is CHROOT/build/build.log.
set -euo pipefail

[ $# = 3 ] || { echo "usage: $0 SUITE CHROOT OUT" >&2; exit 1; }
suite=$1
root=$(realpath -m "$2")
out=$(realpath -m "$3")
src=$(cd "$(dirname "$0")/.." && pwd)
pkg=libnginx-mod-http-cloudauth
chroot_sh=$src/tools/chroot.sh

in_chroot() { "$chroot_sh" run "$root" "$@"; }

# how long each step took (bash counts SECONDS)
step() { echo "[$((SECONDS - t0))s] $*"; }
t0=$SECONDS

step "the $suite chroot in $root"
# nginx for dh_nginx's load test (nginx -t), which nginx-dev may not pull in
"$chroot_sh" create "$root" "$suite" nginx

step "updating $root"
{ in_chroot apt-get update -q &&
  in_chroot apt-get upgrade -y -q; } >> "$root.log" 2>&1 ||
    { tail -20 "$root.log"; exit 1; }

rm -rf "$root/build" && mkdir -p "$root/build/src"
tar -C "$src" --exclude=./.git --exclude=./build --exclude=./build-asan \
    --exclude=./t/browser/node_modules --exclude=./t/tus/node_modules \
    --exclude='./t/tmp*' -cf - . | tar -C "$root/build/src" -xf -

major=$(cut -d. -f1 "$root/etc/debian_version")
case "$major" in
[0-9]*) ;;
*) echo "$root/etc/debian_version: no release number" >&2; exit 1 ;;
esac

version=$(cd "$root/build/src" && dpkg-parsechangelog -S Version)
maint=$(cd "$root/build/src" && dpkg-parsechangelog -S Maintainer)
{
    echo "$pkg ($version+deb$major) $suite; urgency=medium"
    echo
    echo "  * Built for Debian $major ($suite)."
    echo
    echo " -- $maint  $(date -R)"
    echo
    cat "$root/build/src/debian/changelog"
} > "$root/build/changelog"
mv "$root/build/changelog" "$root/build/src/debian/changelog"

step "installing the Build-Depends in $root"
in_chroot apt-get build-dep -y -q --no-install-recommends /build/src \
    >> "$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }

step "dpkg-buildpackage in $root/build/src ($suite, nginx" \
     "$(in_chroot dpkg-query -W -f='${Version}' nginx-dev))"
in_chroot sh -c 'cd /build/src && dpkg-buildpackage -b -us -uc' \
    > "$root/build/build.log" 2>&1 ||
    { tail -40 "$root/build/build.log";
      echo "full log: $root/build/build.log"; exit 1; }

mkdir -p "$out"
rm -f "$out/${pkg}"_*.deb
cp "$root/build/${pkg}_$version+deb${major}_"*.deb "$out/"
step "built $(ls "$out/${pkg}"_*.deb)"
