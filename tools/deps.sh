#!/bin/sh
# Installs what building, running and testing ngx_cloudauth needs, when it is
# missing (Debian). Usage: tools/deps.sh [build|test|bench|deb|fuzz]
set -e

# (make NGINX_SRC= builds nginx itself too: PCRE2 and zlib; nginx-dev
# brings them, named here all the same; tools/nginx-src.sh needs apt's
# apt-helper and Debian's archive keys)
pkgs="nginx nginx-dev libcurl4-openssl-dev libjansson-dev libssl-dev
      libpcre2-dev zlib1g-dev debian-archive-keyring
      pkg-config gcc make openssl ca-certificates"

case "${1:-build}" in
test|bench)
    pkgs="$pkgs perl libhttp-daemon-perl libio-socket-ssl-perl
          libcrypt-openssl-rsa-perl libcrypt-jwt-perl libjson-pp-perl
          libdigest-crc-perl curl chromium"
    # the browser test's driver runs on Node.js (and npm installs it)
    command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs npm"
    ;;
esac

case "${1:-build}" in
bench)
    pkgs="$pkgs wrk gnuplot-nox libnginx-mod-http-lua apache2-utils"
    ;;
deb)
    # dpkg-buildpackage (build-essential is implied by every Build-Depends),
    # the packaging helpers (dh_nginx comes with nginx-dev), lintian, and
    # prove for make test-deb; debootstrap for make deb-trixie's chroot and
    # the fake token endpoint's modules for make test-deb-trixie
    pkgs="$pkgs build-essential debhelper dpkg-dev fakeroot lintian perl
          debootstrap libio-socket-ssl-perl libcrypt-openssl-rsa-perl"
    ;;
fuzz)
    # make fuzz, and the fuzz smoke of make test: Debian's clang with
    # libFuzzer and the sanitizer runtimes (libclang-rt-dev: those of the
    # release's default clang, 14 in Debian 12), llvm-symbolizer,
    # dpkg-source (apt-get source nginx unpacks with it)
    pkgs="$pkgs clang libclang-rt-dev llvm dpkg-dev"
    ;;
esac

missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages:$missing" >&2
        echo "run: sudo apt-get install -y$missing" >&2
        exit 1
    fi

    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi

# t/210-browser.t drives Debian's chromium with playwright-core (no browser
# download of its own), pinned, in t/browser/node_modules (git-ignored);
# Debian 12's own Node.js is 18, which the newest releases no longer take
case "${1:-build}" in
test)
    dir="$(cd "$(dirname "$0")/.." && pwd)/t/browser"
    pw=1.65.1
    [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || pw=1.60.0
    have=$(node -p "require('$dir/node_modules/playwright-core/package.json')
                    .version" 2>/dev/null || true)
    if [ "$have" != "$pw" ]; then
        echo "installing: playwright-core@$pw into t/browser/node_modules"
        npm install --prefix "$dir" --no-save --no-package-lock --no-audit \
            --ignore-scripts \
            --no-fund --loglevel=error "playwright-core@$pw"
    fi

    # t/221-tus-js-client.t runs tus-js-client, pinned by t/tus's
    # package-lock.json, in t/tus/node_modules (git-ignored)
    dir="$(cd "$(dirname "$0")/.." && pwd)/t/tus"
    want=$(node -p "require('$dir/package-lock.json')
                    .packages['node_modules/tus-js-client'].version")
    have=$(node -p "require('$dir/node_modules/tus-js-client/package.json')
                    .version" 2>/dev/null || true)
    if [ "$have" != "$want" ]; then
        echo "installing: tus-js-client@$want into t/tus/node_modules"
        (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund \
                               --loglevel=error)
    fi
    ;;
esac

# nginx-dev has nginx's headers only; the fuzz targets link nginx's core,
# built from Debian's source package (fuzz/build.sh runs apt-get source),
# which needs deb-src entries beside the deb ones (not with FUZZ_NGINX_SRC,
# a source tree given: make test-chroot)
case "${1:-build}" in
fuzz)
    if [ -z "${FUZZ_NGINX_SRC:-}" ] &&
       [ -z "$(apt-cache showsrc nginx 2>/dev/null)" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "no deb-src entries for apt-get source nginx; as root run:" \
                 "tools/deps.sh fuzz" >&2
            exit 1
        fi

        echo "adding deb-src entries to /etc/apt/sources.list.d/"
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            sed 's/^Types: deb$/Types: deb-src/' \
                /etc/apt/sources.list.d/debian.sources \
                > /etc/apt/sources.list.d/cloudauth-deb-src.sources
        else
            sed -n 's/^deb /deb-src /p' /etc/apt/sources.list \
                > /etc/apt/sources.list.d/cloudauth-deb-src.list
        fi
        apt-get update -q
    fi
    ;;
esac
