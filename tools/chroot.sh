#!/bin/bash
# A Debian chroot for building and testing the package for another Debian
# release than the machine's (make deb-trixie, make test-deb-trixie), as root.
#
#   tools/chroot.sh create DIR SUITE [PACKAGE...]
#       makes DIR with debootstrap (minbase) from deb.debian.org when it is
#       not there yet, with SUITE, SUITE-updates and SUITE-security in its
#       apt sources (SUITE alone for sid, which has neither) and a
#       policy-rc.d that keeps package scripts from starting daemons; then
#       installs the PACKAGEs that are missing.
#       A finished chroot is marked with DIR/.cloudauth-chroot; one that is
#       not (an interrupted debootstrap) is made again.
#   tools/chroot.sh run [--dev] DIR COMMAND...
#       runs COMMAND inside DIR with /proc mounted, and unmounts it when the
#       command ends, however it ends (a daemon it starts goes on without it).
#       With --dev the host's /dev (with /dev/pts and /dev/shm, which
#       Chromium needs) is bound there too and sysfs mounted on /sys, all
#       unmounted alike (make test-chroot).
#   tools/chroot.sh stop DIR
#       ends what still runs inside DIR (a test's fake server outliving a
#       killed run) and unmounts what is still mounted under it.
#
# Nothing is mounted between commands: removing DIR (make clean) is safe.
set -euo pipefail

MIRROR=${CLOUDAUTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${CLOUDAUTH_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

die() { echo "chroot.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"

# fails when something is mounted at or below DIR
check_unmounted() {
    local dir
    dir=$(realpath -m "$1")
    if awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { found = 1 }
                        END { exit !found }' /proc/self/mountinfo; then
        die "something is mounted under $dir: unmount it first"
    fi
}

# in a subshell: its EXIT trap runs when the command ends
run() (
    dev=
    [ "$1" != --dev ] || { dev=1; shift; }
    dir=$(realpath "$1")
    shift
    [ -d "$dir/proc" ] || die "no chroot in $dir"
    [ "$dir" != / ] || die "/ is no chroot"

    # unmounted on every way out, in reverse order; lazily, should a
    # process still use them.  /dev is bound recursively and made a slave,
    # so that unmounting it here never reaches the host's
    mounted=()
    unmount() {
        local i
        for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
            umount -R -l "${mounted[i]}" 2>/dev/null || true
        done
    }
    trap unmount EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    mount -t proc proc "$dir/proc" && mounted+=("$dir/proc")
    if [ -n "$dev" ]; then
        mount --rbind /dev "$dir/dev" && mounted+=("$dir/dev") &&
        mount --make-rslave "$dir/dev"
        mount -t sysfs sysfs "$dir/sys" && mounted+=("$dir/sys")
    fi

    # a clean environment, but for the proxy apt may have to go through
    local keep=() v
    for v in http_proxy https_proxy no_proxy; do
        [ -z "${!v:-}" ] || keep+=("$v=${!v}")
    done

    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive TERM=dumb "${keep[@]}" \
        chroot "$dir" "$@"
)

create() {
    local dir=$1 suite=$2 missing p
    shift 2

    if [ ! -f "$dir/.cloudauth-chroot" ]; then
        command -v debootstrap >/dev/null || {
            echo "installing: debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                --no-install-recommends debootstrap ||
            { apt-get update -q &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                  --no-install-recommends debootstrap; }
        }
        if [ -e "$dir" ]; then
            check_unmounted "$dir"
            echo "removing the unfinished chroot $dir"
            rm -rf "$dir"
        fi
        mkdir -p "$(dirname "$dir")"
        echo "debootstrap $suite into $dir (log: $dir.log)"
        debootstrap --variant=minbase "$suite" "$dir" "$MIRROR" \
            > "$dir.log" 2>&1 ||
            { tail -20 "$dir.log"; die "debootstrap failed"; }

        # unstable (sid) and experimental have no -updates or -security.
        # Their Release files are valid for a week only (Valid-Until); the
        # archive as this machine and CI reach it may be a snapshot older
        # than that, which apt refuses as expired: not checked there (the
        # signature still is)
        case "$suite" in
        sid|unstable|experimental)
            echo "deb $MIRROR $suite main" > "$dir/etc/apt/sources.list"
            echo 'Acquire::Check-Valid-Until "false";' \
                > "$dir/etc/apt/apt.conf.d/99cloudauth-valid-until" ;;
        *)
            cat > "$dir/etc/apt/sources.list" <<EOF
deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb $SECURITY $suite-security main
EOF
            ;;
        esac
        # as in a Docker image: package scripts start no daemon here
        printf '#!/bin/sh\nexit 101\n' > "$dir/usr/sbin/policy-rc.d"
        chmod 755 "$dir/usr/sbin/policy-rc.d"
        # the host's resolver, for apt inside
        cp -L /etc/resolv.conf "$dir/etc/resolv.conf"

        run "$dir" apt-get update -q >> "$dir.log" 2>&1 &&
        run "$dir" apt-get upgrade -y -q >> "$dir.log" 2>&1 ||
            { tail -20 "$dir.log"; die "apt-get in the chroot failed"; }
        touch "$dir/.cloudauth-chroot"
    fi

    missing=""
    for p in "$@"; do
        run "$dir" dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "installing in $dir:$missing"
        run "$dir" apt-get update -q >> "$dir.log" 2>&1 &&
        run "$dir" apt-get install -y -q --no-install-recommends $missing \
            >> "$dir.log" 2>&1 ||
            { tail -20 "$dir.log"; die "apt-get install$missing failed"; }
    fi
}

# the processes whose root is DIR are ended, then what is mounted under DIR
# is unmounted (lazily, deepest first)
stop() {
    local dir p m
    dir=$(realpath -m "$1")
    [ "$dir" != / ] || die "/ is no chroot"
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$dir" ] || continue
        kill -TERM "${p#/proc/}" 2>/dev/null || true
    done
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' \
        /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}

case "${1:-}" in
stop)
    [ $# = 2 ] || die "usage: $0 stop DIR"
    stop "$2"
    ;;
create)
    [ $# -ge 3 ] || die "usage: $0 create DIR SUITE [PACKAGE...]"
    shift
    create "$@"
    ;;
run)
    shift
    opt=()
    [ "${1:-}" != --dev ] || { opt=(--dev); shift; }
    [ $# -ge 2 ] || die "usage: $0 run [--dev] DIR COMMAND..."
    [ -f "$1/.cloudauth-chroot" ] || die "no chroot in $1 (create it first)"
    run "${opt[@]}" "$@"
    ;;
*)
    die "usage: $0 create DIR SUITE [PACKAGE...] | run [--dev] DIR COMMAND..."
    ;;
esac
