#!/bin/bash
# The whole suite (make test) inside a Debian chroot of another release,
# against that release's own nginx: make test-chroot. As root.
#
#   tools/test-chroot.sh SUITE CHROOT
#
# For an nginx whose source Debian's archive does not serve here while its
# binary packages are (sid's 1.30 today): the module is built inside the
# chroot against that release's nginx-dev, with Debian's flags, exactly as
# make builds it on Debian 12, and the suite runs against its nginx.
#
# Makes CHROOT with debootstrap when it is not there yet (tools/chroot.sh),
# brings it up to date, copies the checkout into CHROOT/build/ngx_cloudauth
# and runs make test there as root with /proc, /dev (/dev/pts, /dev/shm for
# Chromium) and /sys mounted, unmounted however it ends; tools/deps.sh
# installs the rest from SUITE with apt (and npm's registry).  The chroot
# shares the host's network (the tests bind loopback ports), its resolver
# and the CAs it added locally.
#
# The fuzz targets link nginx's core built from source, which fuzz/build.sh
# takes from Debian's source package: where SUITE's is not served, the
# host's (Debian 12's, fetched on the host as make test's fuzz build does)
# is copied in with its flags (FUZZ_NGINX_SRC, FUZZ_NGINX_FLAGS): they fuzz
# the module's parsers, built with SUITE's clang.  The log is
# CHROOT/build/test.log.
set -euo pipefail

[ $# = 2 ] || { echo "usage: $0 SUITE CHROOT" >&2; exit 1; }
suite=$1
root=$(realpath -m "$2")
src=$(cd "$(dirname "$0")/.." && pwd)
chroot_sh=$src/tools/chroot.sh

in_chroot() { "$chroot_sh" run "$root" "$@"; }

step() { echo "[$((SECONDS - t0))s] $*"; }
t0=$SECONDS

# nothing left running or mounted in the chroot, before and after, however
# the run ends (chroot.sh run unmounts what it mounted; a killed run, or a
# test's fake server in a process group of its own, may leave some)
[ ! -d "$root" ] || "$chroot_sh" stop "$root"
trap '"$chroot_sh" stop "$root"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "nginx's source for the fuzz targets, on the host"
"$src/tools/deps.sh" fuzz
fuzz_src=$(FUZZ_BUILD=$src/build/fuzz "$src/fuzz/build.sh" src | tail -1)

step "the $suite chroot in $root"
"$chroot_sh" create "$root" "$suite" make nginx nginx-dev ca-certificates

# the chroot uses the host's network as it uses its resolver: it trusts the
# CAs the host added (an HTTPS proxy's, which npm's registry may go through)
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt \
        "$root/usr/local/share/ca-certificates/"
    in_chroot update-ca-certificates >> "$root.log" 2>&1 ||
        { tail -20 "$root.log"; exit 1; }
fi

step "updating $root"
{ in_chroot apt-get update -q &&
  in_chroot apt-get upgrade -y -q; } >> "$root.log" 2>&1 ||
    { tail -20 "$root.log"; exit 1; }

# the checkout, without what is built or installed for the host
dest=$root/build/ngx_cloudauth
rm -rf "$dest" "$root/build/fuzz-nginx" && mkdir -p "$dest"
tar -C "$src" --exclude=./.git --exclude=./build --exclude=./build-asan \
    --exclude=./t/browser/node_modules --exclude=./t/tus/node_modules \
    --exclude='./t/tmp*' -cf - . | tar -C "$dest" -xf -
cp -r "$fuzz_src" "$root/build/fuzz-nginx"
rm -rf "$root/build/fuzz-nginx/objs"
cp /usr/share/nginx/src/conf_flags "$root/build/fuzz-nginx.conf_flags"

version=$(in_chroot nginx -v 2>&1 | sed -n 's|.*nginx/||p')
echo "$version" > "$root/build/nginx-version"
step "make test in $root against $suite's nginx $version" \
     "($(in_chroot dpkg-query -W -f='${Version}' nginx))"
rc=0
"$chroot_sh" run --dev "$root" env \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    FUZZ_NGINX_SRC=/build/fuzz-nginx \
    FUZZ_NGINX_FLAGS=/build/fuzz-nginx.conf_flags \
    sh -c 'cd /build/ngx_cloudauth && make test' 2>&1 \
    | tee "$root/build/test.log" || rc=$?
step "make test against $suite's nginx $version: exit $rc" \
     "(log: $root/build/test.log)"
exit "$rc"
