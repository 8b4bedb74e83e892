#!/bin/bash
# Builds the libFuzzer targets of fuzz/*.c into build/fuzz/bin.
#
# nginx-dev ships headers only, so nginx's own sources come from Debian's
# source package (apt-get source nginx; tools/deps.sh fuzz enables deb-src).
# That tree is configured with Debian's flags and built with clang and
# AddressSanitizer plus coverage; its core objects (not nginx.o, which has
# main()) go into libngx.a.  The module's sources are compiled with ASan,
# UBSan and coverage into libcloudauth.a.  Each target links what it needs:
#
#   fuzz_X.c + libcloudauth.a + libngx.a    (real module code)
#   fuzz_X.c + libngx.a                     (the target #includes one module
#                                            .c file for its static parsers
#                                            and stubs what that file calls)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_BUILD:-$ROOT/build/fuzz}
SRC=$OUT/src
NGX=$OUT/nginx
MOD=$ROOT/ngx_cloudauth_module
DEBIAN_SRC=/usr/share/nginx/src
CC=${FUZZ_CC:-clang}
JOBS=${FUZZ_JOBS:-2}

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all
     -fno-sanitize=nonnull-attribute"
COMMON="-g -O1 -fno-omit-frame-pointer"

mkdir -p "$OUT/bin" "$OUT/obj"

# 1. nginx's sources, the version of nginx-dev if Debian still has it;
#    FUZZ_NGINX_SRC=DIR takes that nginx source tree instead (where the
#    archive does not serve nginx's source package: make test-chroot), with
#    FUZZ_NGINX_FLAGS=FILE, a conf_flags file as nginx-dev ships, when the
#    tree is another version than nginx-dev's.  The targets fuzz the
#    module's parsers; nginx's core is only what they link against.
#    "fuzz/build.sh src" stops after this step (make test-chroot takes the
#    tree into the chroot).

FLAGS=${FUZZ_NGINX_FLAGS:-$DEBIAN_SRC/conf_flags}
if [ -n "${FUZZ_NGINX_SRC:-}" ]; then
    [ -f "$FUZZ_NGINX_SRC/src/core/nginx.c" ] ||
        { echo "fuzz: FUZZ_NGINX_SRC=$FUZZ_NGINX_SRC: no nginx source" >&2;
          exit 1; }
    SRC_TREE=$FUZZ_NGINX_SRC
else
    SRC_TREE=$SRC/nginx
fi

if [ -z "${FUZZ_NGINX_SRC:-}" ] && [ ! -f "$SRC/.done" ]; then
    rm -rf "$SRC" && mkdir -p "$SRC"
    want=$(dpkg-query -W -f '${Version}' nginx-dev 2>/dev/null || true)
    (
        cd "$SRC"
        ok=
        for v in "$want" $(apt-cache showsrc nginx 2>/dev/null \
                           | sed -n 's/^Version: //p' | sort -rV); do
            [ -n "$v" ] || continue
            if apt-get source -q "nginx=$v" >apt-source.log 2>&1; then
                ok=$v
                break
            fi
        done
        if [ -z "$ok" ]; then
            cat apt-source.log >&2
            echo "fuzz: cannot get nginx's source package;" \
                 "run tools/deps.sh fuzz (as root) first" >&2
            exit 1
        fi
        echo "fuzz: nginx source $ok (nginx-dev is $want)"
    )
    dir=$(ls -d "$SRC"/nginx-*/ | head -1)
    mv "$dir" "$SRC/nginx"
    touch "$SRC/.done"
fi

[ "${1:-}" != src ] || { echo "$SRC_TREE"; exit 0; }

# 2. nginx configured as Debian's, built with clang, ASan and coverage;
#    made again when its source or flags are others

key=${FUZZ_NGINX_SRC:+$SRC_TREE $FLAGS}${FUZZ_NGINX_FLAGS:+ $FLAGS}
if [ ! -f "$NGX/.done" ] || [ "$(cat "$NGX/.done")" != "$key" ]; then
    rm -rf "$NGX"
    cp -r "$SRC_TREE" "$NGX"
    rm -rf "$NGX/objs"
    # nginx's own code is not held to a newer clang's new warnings (Debian
    # 12's nginx 1.22 under sid's clang: -Wunterminated-string-initialization)
    # as the module's is: -Wno-error after configure's -Werror
    cc_opt="$COMMON -fsanitize=address -fsanitize=fuzzer-no-link -Wno-error"
    (
        cd "$NGX"
        # an array of quoted words in newer nginx-dev: used as such
        # shellcheck disable=SC1090
        . "$FLAGS"
        CC=$CC ./configure "${NGX_CONF_FLAGS[@]}" \
            --with-cc-opt="$cc_opt" \
            --with-ld-opt="-fsanitize=address" \
            >"$OUT/configure.log" 2>&1 \
            || { tail -30 "$OUT/configure.log"; exit 1; }
        objs=$(grep -o 'objs/src/[^ ]*\.o' objs/Makefile | sort -u \
               | grep -v '^objs/src/core/nginx\.o$')
        # shellcheck disable=SC2086
        make -s -j"$JOBS" -f objs/Makefile $objs >"$OUT/make.log" 2>&1 \
            || { tail -30 "$OUT/make.log"; exit 1; }
        rm -f "$OUT/libngx.a"
        # shellcheck disable=SC2086
        ar rcs "$OUT/libngx.a" $objs
    )
    echo "$key" > "$NGX/.done"
fi

INC="-I$NGX/objs -I$NGX/src/core -I$NGX/src/event -I$NGX/src/event/modules
     -I$NGX/src/os/unix -I$NGX/src/http -I$NGX/src/http/modules
     -I$NGX/src/http/v2 -I$MOD $(pkg-config --cflags libcurl jansson openssl)"
LIBS="$(pkg-config --libs libcurl jansson openssl) -lpcre2-8 -lz -lcrypt
      -lpthread"
CFLAGS="$COMMON $SAN -Wall -Wextra -Wno-unused-parameter -Werror $INC"

# 3. the module, instrumented; rebuilt when a source or the flags change

if [ "$(cat "$OUT/obj/flags" 2>/dev/null)" != "$CFLAGS" ]; then
    rm -f "$OUT"/obj/*.o "$OUT"/bin/fuzz_*
    echo "$CFLAGS" > "$OUT/obj/flags"
fi

newer() {    # newer TARGET FILE...: is any FILE newer than TARGET
    local f
    [ -e "$1" ] || return 0
    for f in "${@:2}"; do
        [ "$f" -nt "$1" ] && return 0
    done
    return 1
}

objs=
changed=
for c in "$MOD"/*.c; do
    o=$OUT/obj/$(basename "${c%.c}").o
    if newer "$o" "$c" "$MOD"/*.h "$OUT/libngx.a"; then
        # shellcheck disable=SC2086
        $CC $CFLAGS -fsanitize=fuzzer-no-link -c "$c" -o "$o"
        changed=1
    fi
    objs="$objs $o"
done

if [ -n "$changed" ] || [ ! -f "$OUT/libcloudauth.a" ]; then
    rm -f "$OUT/libcloudauth.a"
    # shellcheck disable=SC2086
    ar rcs "$OUT/libcloudauth.a" $objs
fi

# 4. the targets: "real" ones link the module, the others bring stubs

for t in "$ROOT"/fuzz/fuzz_*.c; do
    name=$(basename "${t%.c}")
    bin=$OUT/bin/$name
    libs="$OUT/libngx.a"
    if ! grep -q '^#include "ngx_cloudauth_[a-z_0-9]*\.c"' "$t"; then
        libs="$OUT/libcloudauth.a $libs"
    fi
    # shellcheck disable=SC2086
    newer "$bin" "$t" "$ROOT"/fuzz/harness.[ch] "$MOD"/*.[ch] $libs || continue
    # shellcheck disable=SC2086
    $CC $CFLAGS -fsanitize=fuzzer -I"$ROOT/fuzz" -o "$bin" \
        "$t" "$ROOT/fuzz/harness.c" \
        -Wl,--start-group $libs -Wl,--end-group $LIBS
    echo "fuzz: built $bin"
done

# 5. seeds with service-account keys, made here and never committed (a
#    tracked private key, even a fake one, is a leak waiting to happen): a
#    real key, one whose token_uri is plain http elsewhere, one whose key
#    does not parse

seed=$OUT/seeds/fuzz_key_file
if [ ! -f "$seed/generated-not-real" ]; then
    mkdir -p "$seed"
    pem=$(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
          2>/dev/null | awk '{ printf "%s\\n", $0 }')
    [ -n "$pem" ] || { echo "fuzz: openssl genpkey failed" >&2; exit 1; }

    key() {     # key FILE PEM TOKEN_URI
        printf '\000{"type": "service_account", "project_id": "fuzz",
 "private_key_id": "0123456789abcdef", "private_key": "%s",
 "client_email": "fuzz@fuzz.iam.gserviceaccount.com",
 "token_uri": "%s"}\n' "$2" "$3" > "$seed/$1"
        chmod 600 "$seed/$1"
    }

    key generated-key "$pem" https://oauth2.googleapis.com/token
    key generated-http-token-uri "$pem" http://evil.example/token
    key generated-not-real "$(printf '%s' "$pem" | cut -c1-120)\\n" \
        https://oauth2.googleapis.com/token
fi
