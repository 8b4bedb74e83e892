#!/bin/bash
# Two builds of the module side by side: the upload paths of bench sections
# 4 (one raw PUT, default settings) and 7 (tus: a POST, then one PATCH of
# the whole file), each through a gateway of its own (one worker, CPU 0)
# into bench/gcs_sink.c (CPU 1, no MD5), rounds interleaved A B A B.
# For a change's before and after, measured in one run:
#
#   MODULE_A=old.so MODULE_B=new.so UPLOAD_MB=256 ROUNDS=5 bench/ab.sh
#
# Prints each round and the medians, MB/s and B/A.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/bench
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE_A=${MODULE_A:?MODULE_A=path of the first module}
MODULE_B=${MODULE_B:?MODULE_B=path of the second module}
UPLOAD_MB=${UPLOAD_MB:-256}
ROUNDS=${ROUNDS:-5}
SINK=${SINK:-$ROOT/build/gcs_sink}

T=$(mktemp -d /tmp/cloudauth-ab.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done;
      for f in "$T"/*.pid; do [ -f "$f" ] && kill -QUIT "$(cat "$f")" \
      2>/dev/null || true; done; sleep 0.3; rm -rf "$T"' EXIT

GW_CPU="taskset -c 0"
LOAD_CPU="taskset -c 1"

port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen=>1,LocalAddr=>"127.0.0.1:0")->sockport'
}

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    return 1
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

[ -x "$SINK" ] || { mkdir -p "$(dirname "$SINK")";
                    cc -O2 -Wall -o "$SINK" "$B/gcs_sink.c" -lcrypto; }

openssl genrsa -out "$T/sa.pem" 2048 2>/dev/null
perl -MJSON::PP -e '
    local $/; open my $f, "<", $ARGV[0]; my $pem = <$f>;
    print JSON::PP->new->encode({type => "service_account",
        client_email => "bench\@project.iam.gserviceaccount.com",
        private_key_id => "bench", private_key => $pem,
        token_uri => "http://127.0.0.1/token"})' "$T/sa.pem" > "$T/sa.json"
chmod 600 "$T/sa.json"

SINKP=$(port)
$LOAD_CPU "$SINK" -M "$SINKP" > /dev/null 2>> "$T/sink.log" &
PIDS+=($!)
TOK=$(port)
perl "$B/fake_token.pl" "$TOK" 0 3600 "$T/token.log" &
PIDS+=($!)
wait_port "$SINKP"
wait_port "$TOK"

gateway() {
    local name=$1 module=$2 p=$3
    mkdir -p "$T/$name"
    cat > "$T/$name/nginx.conf" <<EOF
load_module $module;
worker_processes 1;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $T/$name;
    client_max_body_size $((UPLOAD_MB + 1))m;
    client_body_buffer_size 128k;
    cloudauth_credential google type=google_service_account
        key_file=$T/sa.json
        scopes=https://www.googleapis.com/auth/devstorage.read_write
        token_url=http://127.0.0.1:$TOK/token;
    server {
        listen 127.0.0.1:$p;
        location /up/ {
            cloudauth_gcs_upload google bucket=bench overwrite=on
                resumable=on endpoint=http://127.0.0.1:$SINKP;
        }
    }
}
EOF
    $GW_CPU "$NGINX" -p "$T/$name" -c "$T/$name/nginx.conf" \
        -g "pid $T/$name.pid; error_log $T/$name/error.log info;"
    wait_port "$p"
}

PA=$(port)
PB=$(port)
gateway a "$MODULE_A" "$PA"
gateway b "$MODULE_B" "$PB"

head -c $((UPLOAD_MB * 1024 * 1024)) /dev/urandom > "$T/body"

# put PORT NAME -> MB/s
put() {
    $LOAD_CPU curl -s -T "$T/body" -H 'Expect:' -o /dev/null \
        -w '%{http_code} %{size_upload} %{time_total}\n' \
        "http://127.0.0.1:$1/up/$2" \
    | awk '$1 == 201 { printf "%.1f\n", $2 / $3 / 1e6; next } { print 0 }'
}

# tus PORT NAME -> MB/s of the POST and the PATCH together
tus() {
    local t0 loc res
    t0=$(date +%s.%N)
    loc=$(curl -s -o /dev/null -D - -X POST -H 'Tus-Resumable: 1.0.0' \
              -H "Upload-Length: $((UPLOAD_MB * 1024 * 1024))" \
              -H "Upload-Metadata: filename $(printf %s "$2" | base64 -w0)" \
              "http://127.0.0.1:$1/up/" \
          | tr -d '\r' | sed -n 's/^Location: //Ip')
    res=$($LOAD_CPU curl -s -X PATCH -T "$T/body" -H 'Expect:' \
              -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
              -H 'Content-Type: application/offset+octet-stream' \
              -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$loc")
    [ "$res" = 204 ] || { echo 0; return; }
    awk -v t0="$t0" -v t1="$(date +%s.%N)" -v b=$((UPLOAD_MB * 1048576)) \
        'BEGIN { printf "%.1f\n", b / (t1 - t0) / 1e6 }'
}

put "$PA" warm-a > /dev/null
put "$PB" warm-b > /dev/null

: > "$T/rounds"
for r in $(seq "$ROUNDS"); do
    for v in a b; do
        p=$PA
        [ $v = b ] && p=$PB
        echo "put $v $r $(put "$p" "put-$v-$r")" | tee -a "$T/rounds"
        echo "tus $v $r $(tus "$p" "tus-$v-$r")" | tee -a "$T/rounds"
    done
done

echo "== medians of $ROUNDS rounds, ${UPLOAD_MB} MiB, $(lscpu \
      | sed -n 's/^Model name: *//p')"
for what in put tus; do
    a=$(awk -v w=$what '$1 == w && $2 == "a" { print $4 }' "$T/rounds" | median)
    b=$(awk -v w=$what '$1 == w && $2 == "b" { print $4 }' "$T/rounds" | median)
    awk -v w=$what -v a="$a" -v b="$b" \
        'BEGIN { printf "%s: A %.1f MB/s, B %.1f MB/s, B/A %.3f\n",
                 w, a, b, (a > 0 ? b / a : 0) }'
done
