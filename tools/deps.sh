#!/bin/sh
# Installs what building, running and testing ngx_cloudauth needs, when it is
# missing (Debian). Usage: tools/deps.sh [build|test|bench]
set -e

pkgs="nginx nginx-dev libcurl4-openssl-dev libjansson-dev libssl-dev
      pkg-config gcc make openssl ca-certificates"

case "${1:-build}" in
test|bench)
    pkgs="$pkgs perl libhttp-daemon-perl libio-socket-ssl-perl
          libcrypt-openssl-rsa-perl libcrypt-jwt-perl libjson-pp-perl
          libdigest-crc-perl curl"
    ;;
esac

case "${1:-build}" in
bench)
    pkgs="$pkgs wrk gnuplot-nox libnginx-mod-http-lua apache2-utils"
    ;;
esac

missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages:$missing" >&2
    echo "run: sudo apt-get install -y$missing" >&2
    exit 1
fi

echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends $missing
