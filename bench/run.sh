#!/bin/bash
# ngx_cloudauth benchmarks: `make bench`. Everything on loopback; each figure
# is a ratio against a reference measured in the same run, rounds interleaved
# (A B C D A B C D ...), medians quoted. Writes bench/RESULTS.md and PNGs.
#
#   ROUNDS=5 DUR=5 CONNS=32 bench/run.sh
#
# ONLY=hotpath runs section 1 alone and prints its ratios (RESULTS.md is
# left as it is).
# ONLY=upload runs section 4 alone and replaces that section in an existing
# RESULTS.md (UPLOAD_MB=1024 CONC=20 CONC_MB=100 size it;
# UPLOAD_BODY_BUF=128k is the gateway's client_body_buffer_size).
# ONLY=scale runs section 6 alone and replaces (or adds) that section in
# RESULTS.md (SUBJECTS=10000 cached subjects, SCALE_TOKEN_LEN=240 bytes).
# ONLY=tus runs section 7 alone (resumable uploads: tus PATCH against a
# single PUT to the same location and against proxy_pass, and the bytes
# sent again after interruptions; UPLOAD_MB sizes it; TUS_SINK_MD5=1 runs
# the GCS stand-in with MD5) and replaces (or adds) it in RESULTS.md.
# SINK_DELAY=30 SINK_TLS=1 (sections 4 and 7): the stand-in answers each
# request 30 ms late (a round trip to GCS) and speaks HTTPS, proxy_pass and
# curl too; the sections are then 4b and 7b, beside 4 and 7.
# UPLOAD_VARIANTS="proxy cloudauth" (section 4) runs only those (to profile
# one, say); KEEP_T=1 keeps the set-up directory.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/bench
MODULE=${MODULE:-$ROOT/build/ngx_http_cloudauth_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-5}
CONNS=${CONNS:-32}
BURST=${BURST:-1000}
ONLY=${ONLY:-}
UPLOAD_MB=${UPLOAD_MB:-1024}
CONC=${CONC:-20}
CONC_MB=${CONC_MB:-100}
UPLOAD_BODY_BUF=${UPLOAD_BODY_BUF:-128k}
SINK=${SINK:-$ROOT/build/gcs_sink}
SUBJECTS=${SUBJECTS:-10000}
SCALE_TOKEN_LEN=${SCALE_TOKEN_LEN:-240}
SINK_DELAY=${SINK_DELAY:-0}
SINK_TLS=${SINK_TLS:-0}

case "$ONLY" in
    ""|upload|hotpath|scale|tus) ;;
    *) echo "ONLY=$ONLY: ONLY=upload, ONLY=hotpath, ONLY=scale or" \
            "ONLY=tus" >&2
       exit 2 ;;
esac

T=$(mktemp -d /tmp/cloudauth-bench.XXXXXX)
UPLOAD_DIR=""
trap 'stop_all; [ "${KEEP_T:-0}" = 1 ] || rm -rf "$T"; rm -rf ${UPLOAD_DIR:+"$UPLOAD_DIR"}' EXIT
ulimit -n 65536 2>/dev/null || true

# the stand-in as sections 4 and 7 run it: latency, HTTPS
SINK_OPTS=(-d "$SINK_DELAY")
SINK_SCHEME=http
SINK_CA_CONF=""
CURL_CA=()
SEC4=4
SEC7=7
SINK_WHAT="plain HTTP, answering at once"
if [ "$SINK_TLS" = 1 ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext "subjectAltName=IP:127.0.0.1" -keyout "$T/sink.key" \
        -out "$T/sink.crt" 2> /dev/null
    # the workers (nobody, when root starts nginx) read the certificate
    chmod 711 "$T"
    chmod 644 "$T/sink.crt"
    SINK_OPTS+=(-c "$T/sink.crt" -k "$T/sink.key")
    SINK_SCHEME=https
    SINK_CA_CONF="cloudauth_trusted_certificate $T/sink.crt;"
    CURL_CA=(--cacert "$T/sink.crt")
fi
if [ "$SINK_TLS" = 1 ] || [ "$SINK_DELAY" != 0 ]; then
    SEC4=4b
    SEC7=7b
    SINK_WHAT="$SINK_SCHEME, answering each request after $SINK_DELAY ms"
fi

# pin nginx and the load apart when there are two cores or more
if [ "$(nproc)" -ge 2 ]; then
    GW_CPU="taskset -c 0"
    LOAD_CPU="taskset -c 1"
else
    GW_CPU=""
    LOAD_CPU=""
fi

port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen=>1,LocalAddr=>"127.0.0.1:0")->sockport'
}

PIDS=()

stop_all() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for f in "$T"/*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 0.3
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    return 1
}

# nginx NAME CONF-BODY: starts nginx with a config in $T/NAME
start_nginx() {
    local name=$1 pin=$2
    mkdir -p "$T/$name"
    cat > "$T/$name/nginx.conf"
    $pin "$NGINX" -p "$T/$name" -c "$T/$name/nginx.conf" \
        -g "pid $T/$name.pid; error_log $T/$name/error.log info;"
}

stop_nginx() {
    [ -f "$T/$1.pid" ] && kill -QUIT "$(cat "$T/$1.pid")" 2>/dev/null || true
    for _ in $(seq 50); do
        [ -f "$T/$1.pid" ] || return 0
        sleep 0.1
    done
}

temps() {
    local d=$T/$1
    echo "client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d;"
    echo "uwsgi_temp_path $d; scgi_temp_path $d;"
}

# wrk DURATION URL [WRK-ARGS] -> "rps p50_ms p99_ms non2xx"
run_wrk() {
    local dur=$1
    shift
    $LOAD_CPU wrk -t1 -c"$CONNS" -d"$dur"s --latency "$@" | awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000;
            if (v ~ /ms$/) return v + 0;
            if (v ~ /s$/) return v * 1000;
            return v
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Requests\/sec/ { rps = $2 }
        /Non-2xx/ { bad = $5 }
        END { printf "%s %.3f %.3f %d\n", rps, p50, p99, bad + 0 }'
}

echo "== set-up in $T"

openssl genrsa -out "$T/sa.pem" 2048 2>/dev/null
perl -MJSON::PP -e '
    local $/; open my $f, "<", $ARGV[0]; my $pem = <$f>;
    print JSON::PP->new->encode({type => "service_account",
        client_email => "bench\@project.iam.gserviceaccount.com",
        private_key_id => "bench", private_key => $pem,
        token_uri => "http://127.0.0.1/token"})' "$T/sa.pem" > "$T/sa.json"
chmod 600 "$T/sa.json"

# 4. upload throughput and memory (defined here, run after 3) ---------------

# the workers' VmRSS summed, in KiB, every 100 ms into FILE ("time kib"
# lines) until killed: upload_sampler NAME FILE & (on the load's core; exec,
# so that $! is the sampler itself)
upload_sampler() {
    exec $LOAD_CPU perl -MTime::HiRes=time,sleep -e '
        my ($out, @pids) = @ARGV;
        open my $o, ">", $out or die "$out: $!";
        select((select($o), $| = 1)[0]);
        while (1) {
            my $kib = 0;
            for my $p (@pids) {
                open my $st, "<", "/proc/$p/status" or next;
                while (<$st>) { $kib += $1 if /^VmRSS:\s+(\d+)/ }
            }
            printf $o "%.3f %d\n", time, $kib;
            sleep 0.1;
        }' "$2" $(pgrep -P "$(cat "$T/$1.pid")")
}

# the workers' VmRSS and VmHWM, summed, in KiB: "rss hwm"
upload_mem() {
    local p rss=0 hwm=0
    for p in $(pgrep -P "$(cat "$T/$1.pid")"); do
        rss=$((rss + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
        hwm=$((hwm + $(awk '/^VmHWM/ {print $2}' "/proc/$p/status")))
    done
    echo "$rss $hwm"
}

# the workers' CPU time, in seconds
upload_cpu() {
    local p
    for p in $(pgrep -P "$(cat "$T/$1.pid")"); do
        sed 's/^.*) //' "/proc/$p/stat"
    done | awk '{ s += $12 + $13 } END { printf "%.2f", s / 100 }'
}

# one upload by curl: "MB/s http_code bytes seconds"
# upload_curl PIN FILE URL ANSWER-FILE
upload_curl() {
    { $1 curl -s "${CURL_CA[@]}" -X PUT -T "$2" -H 'Expect:' \
          -H 'Content-Type: application/octet-stream' -o "$4" \
          -w '%{http_code} %{size_upload} %{time_total}\n' "$3" || true; } \
        | awk '{ printf "%.1f %s %s %s\n",
                        ($3 > 0 ? $2 / $3 / 1e6 : 0), $1, $2, $3 }'
}

upload_conf() {
    cat <<EOF
load_module $MODULE;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    $(temps upload)
    client_max_body_size $((UPLOAD_MB + 1))m;
    client_body_buffer_size $UPLOAD_BODY_BUF;
    $SINK_CA_CONF
    cloudauth_credential google type=google_service_account
        key_file=$T/sa.json
        scopes=https://www.googleapis.com/auth/devstorage.read_write
        token_url=http://127.0.0.1:$TOK4/token;
    upstream sink { server 127.0.0.1:$SINKP; keepalive 64; }
    server {
        listen 127.0.0.1:$GW4 backlog=4096;
        location /proxy/ {
            rewrite ^/proxy/(.*)\$
                /upload/storage/v1/b/bench/o?uploadType=media&name=\$1 break;
            proxy_request_buffering off;
            $LOC_PROXY
            proxy_pass $SINK_SCHEME://sink;
        }
        location /cloudauth/ {
            cloudauth_gcs_upload google bucket=bench overwrite=on
                endpoint=$SINK_SCHEME://127.0.0.1:$SINKP;
        }
        location /chunks/ {
            cloudauth_gcs_upload google bucket=bench overwrite=on
                chunk_size=8m endpoint=$SINK_SCHEME://127.0.0.1:$SINKP;
        }
        location /md5on/ {
            cloudauth_gcs_upload google bucket=bench overwrite=on md5=on
                endpoint=$SINK_SCHEME://127.0.0.1:$SINKP;
        }
    }
}
EOF
}

bench_upload() {
    local r v i res url pin sp sampler t0 t1 rss0 hwm ok peak md5 t_start cpu0
    local p0 p1
    local D

    t_start=$(date +%s)
    UPLOAD_BYTES=$((UPLOAD_MB * 1024 * 1024))
    CONC_BYTES=$((CONC_MB * 1024 * 1024))
    LOC_PROXY='proxy_http_version 1.1; proxy_set_header Connection "";'

    mkdir -p "$(dirname "$SINK")"
    cc -O2 -Wall -o "$SINK" "$B/gcs_sink.c" -lssl -lcrypto

    # the bodies, in memory (tmpfs) when there is one: no disk writeback
    # while measuring
    UPLOAD_DIR=$(mktemp -d /dev/shm/cloudauth-bench.XXXXXX 2> /dev/null) \
        || UPLOAD_DIR=""
    D=${UPLOAD_DIR:-$T}
    head -c "$UPLOAD_BYTES" /dev/urandom > "$D/upload.bin"
    head -c "$CONC_BYTES" "$D/upload.bin" > "$D/conc.bin"
    head -c 1000 "$D/upload.bin" > "$D/warm.bin"

    # what MD5 costs one core here, in seconds per GiB
    MD5_S=$($GW_CPU openssl speed -seconds 2 -bytes 16384 md5 2> /dev/null \
            | awk '/^md5/ { v = $2; sub(/k$/, "", v)
                            printf "%.2f", 1073741824 / (v * 1000) }')

    # the stand-in alone, with MD5 and without: curl on CPU 0, it on CPU 1;
    # its CPU time gives its capacity
    echo "== upload: the GCS stand-in alone, ${UPLOAD_MB} MiB x $ROUNDS"
    : > "$T/sink.tsv"
    for md5 in on off; do
        SINKP=$(port)
        if [ $md5 = on ]; then
            $LOAD_CPU "$SINK" "${SINK_OPTS[@]}" "$SINKP" \
                > /dev/null 2>> "$T/sink.log" &
        else
            $LOAD_CPU "$SINK" "${SINK_OPTS[@]}" -M "$SINKP" \
                > /dev/null 2>> "$T/sink.log" &
        fi
        sp=$!
        PIDS+=($sp)
        wait_port "$SINKP"
        for r in $(seq "$ROUNDS"); do
            res=$(upload_curl "$GW_CPU" "$D/upload.bin" \
                  "$SINK_SCHEME://127.0.0.1:$SINKP/upload/storage/v1/b/bench/o?uploadType=media&name=alone-$r" \
                  "$T/up.out")
            echo "alone-md5-$md5 $r $res" | tee -a "$T/sink.tsv"
        done
        awk -v n="$ROUNDS" -v b="$UPLOAD_BYTES" -v m=$md5 '
            { sub(/^.*\) /, ""); cpu = ($12 + $13) / 100
              printf "cpu-md5-%s %.2f %.1f\n", m, cpu,
                     cpu ? n * b / cpu / 1e6 : 0 }' "/proc/$sp/stat" \
            | tee -a "$T/sink.tsv"
        kill "$sp"
        wait "$sp" 2> /dev/null || true
    done

    # the stand-in the gateway talks to: CRC32C checked, no MD5 (see above)
    SINKP=$(port)
    $LOAD_CPU "$SINK" "${SINK_OPTS[@]}" -M "$SINKP" \
        > /dev/null 2>> "$T/sink.log" &
    PIDS+=($!)
    wait_port "$SINKP"

    TOK4=$(port)
    perl "$B/fake_token.pl" "$TOK4" 0 3600 "$T/upload-token.log" &
    PIDS+=($!)
    wait_port "$TOK4"

    GW4=$(port)
    upload_conf | start_nginx upload "$GW_CPU"
    wait_port "$GW4"

    # warm: the token, the keep-alive connections
    for v in proxy cloudauth chunks md5on; do
        upload_curl "$LOAD_CPU" "$D/warm.bin" \
            "http://127.0.0.1:$GW4/$v/warm" "$T/up.out" > /dev/null
    done

    read -r UP_RSS0 _ < <(upload_mem upload)
    upload_sampler upload "$T/rss-a.tsv" &
    sampler=$!

    # (a) one upload of UPLOAD_MB at a time, rounds interleaved
    echo "== upload: ${UPLOAD_MB} MiB, $ROUNDS rounds of direct, proxy, cloudauth, chunks, md5on"
    : > "$T/upload.tsv"
    for r in $(seq "$ROUNDS"); do
        for v in ${UPLOAD_VARIANTS:-direct proxy cloudauth chunks md5on}; do
            if [ $v = direct ]; then
                # curl takes the gateway's core, the stand-in keeps its own
                pin=$GW_CPU
                url="$SINK_SCHEME://127.0.0.1:$SINKP/upload/storage/v1/b/bench/o?uploadType=media&name=direct-$r"
            else
                pin=$LOAD_CPU
                url="http://127.0.0.1:$GW4/$v/$v-$r"
            fi
            cpu0=$(upload_cpu upload)
            res=$(upload_curl "$pin" "$D/upload.bin" "$url" "$T/up.out")
            res="$res $(awk -v a="$cpu0" -v b="$(upload_cpu upload)" \
                        'BEGIN { printf "%.2f", b - a }')"
            # the answer names the whole size
            grep -Eq "\"size\": *\"?$UPLOAD_BYTES\"?[,}]" "$T/up.out" \
                || res="$res BAD"
            echo "$v $r $res" | tee -a "$T/upload.tsv"
        done
    done

    kill "$sampler"
    wait "$sampler" 2> /dev/null || true
    stop_nginx upload

    # (b) CONC concurrent uploads of CONC_MB through cloudauth, a fresh
    # nginx each round
    echo "== upload: $CONC concurrent ${CONC_MB} MiB uploads, $ROUNDS rounds"
    : > "$T/conc.tsv"
    for r in $(seq "$ROUNDS"); do
        upload_conf | start_nginx upload "$GW_CPU"
        wait_port "$GW4"
        upload_curl "$LOAD_CPU" "$D/warm.bin" \
            "http://127.0.0.1:$GW4/cloudauth/warm" "$T/up.out" > /dev/null
        read -r rss0 _ < <(upload_mem upload)
        upload_sampler upload "$T/rss-b-$r.tsv" &
        sampler=$!
        cpu0=$(upload_cpu upload)
        t0=$(date +%s.%N)
        local curls=()
        for i in $(seq "$CONC"); do
            upload_curl "$LOAD_CPU" "$D/conc.bin" \
                "http://127.0.0.1:$GW4/cloudauth/conc-$r-$i" \
                "$T/conc-$i.out" > "$T/conc-$i.res" &
            curls+=($!)
        done
        wait "${curls[@]}" || true
        t1=$(date +%s.%N)
        sleep 0.2
        kill "$sampler"
        wait "$sampler" 2> /dev/null || true
        read -r _ hwm < <(upload_mem upload)
        cpu0=$(awk -v a="$cpu0" -v b="$(upload_cpu upload)" \
                   'BEGIN { printf "%.2f", b - a }')
        ok=0
        for i in $(seq "$CONC"); do
            grep -Eq "\"size\": *$CONC_BYTES[,}]" "$T/conc-$i.out" \
                && ok=$((ok + 1))
        done
        peak=$(awk '$2 > m {m = $2} END {print m + 0}' "$T/rss-b-$r.tsv")

        # the same through proxy_pass, for its aggregate
        upload_curl "$LOAD_CPU" "$D/warm.bin" \
            "http://127.0.0.1:$GW4/proxy/warm" "$T/up.out" > /dev/null
        p0=$(date +%s.%N)
        curls=()
        for i in $(seq "$CONC"); do
            upload_curl "$LOAD_CPU" "$D/conc.bin" \
                "http://127.0.0.1:$GW4/proxy/pconc-$r-$i" \
                "$T/pconc-$i.out" > "$T/pconc-$i.res" &
            curls+=($!)
        done
        wait "${curls[@]}" || true
        p1=$(date +%s.%N)

        awk -v r="$r" -v n="$CONC" -v b="$CONC_BYTES" -v t0="$t0" \
            -v t1="$t1" -v ok="$ok" -v rss0="$rss0" -v peak="$peak" \
            -v hwm="$hwm" -v cpu="$cpu0" -v p0="$p0" -v p1="$p1" 'BEGIN {
                printf "%d %.1f %d %d %d %d %.2f %.2f %.2f %.1f\n", r,
                       n * b / (t1 - t0) / 1e6, ok, rss0, peak, hwm,
                       (peak - rss0) / n / 1024, (hwm - rss0) / n / 1024,
                       cpu, n * b / (p1 - p0) / 1e6 }' \
            | tee -a "$T/conc.tsv"
        stop_nginx upload
    done

    upload_results
    UP_SECONDS=$(( $(date +%s) - t_start ))
    echo "== upload: section took $UP_SECONDS s"
}

upload_results() {
    col() { awk -v v="$1" -v c="$2" '$1 == v {print $c}' "$3" | median; }
    U_DIRECT=$(col direct 3 "$T/upload.tsv")
    U_PROXY=$(col proxy 3 "$T/upload.tsv")
    U_CA=$(col cloudauth 3 "$T/upload.tsv")
    U_MD5ON=$(col md5on 3 "$T/upload.tsv")
    U_CHUNKS=$(col chunks 3 "$T/upload.tsv")
    U_CHUNKS_CPU=$(awk -v m="$UPLOAD_MB" '$1 == "chunks" {printf "%.2f\n", $7 * 1024 / m}' \
                   "$T/upload.tsv" | median)
    C_PROXY=$(awk '{print $10}' "$T/conc.tsv" | median)
    U_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
    U_MD5ON_CPU=$(awk -v m="$UPLOAD_MB" '$1 == "md5on" {printf "%.2f\n", $7 * 1024 / m}' \
                  "$T/upload.tsv" | median)
    U_PROXY_CPU=$(awk -v m="$UPLOAD_MB" '$1 == "proxy" {printf "%.2f\n", $7 * 1024 / m}' \
                  "$T/upload.tsv" | median)
    U_CA_CPU=$(awk -v m="$UPLOAD_MB" '$1 == "cloudauth" {printf "%.2f\n", $7 * 1024 / m}' \
               "$T/upload.tsv" | median)
    C_CPU=$(awk -v b="$((CONC * CONC_MB))" '{printf "%.2f\n", $9 * 1024 / b}' \
            "$T/conc.tsv" | median)
    U_BAD=$(awk '$4 !~ /^2/ || /BAD/' "$T/upload.tsv" | wc -l)
    S_MD5=$(col alone-md5-on 3 "$T/sink.tsv")
    S_NOMD5=$(col alone-md5-off 3 "$T/sink.tsv")
    S_CAP_MD5=$(col cpu-md5-on 3 "$T/sink.tsv")
    S_CAP_NOMD5=$(col cpu-md5-off 3 "$T/sink.tsv")
    C_AGG=$(awk '{print $2}' "$T/conc.tsv" | median)
    C_OK=$(awk '{s += $3} END {print s + 0}' "$T/conc.tsv")
    C_GROW=$(awk '{print $7}' "$T/conc.tsv" | median)
    C_GROW_MAX=$(awk '{print $7}' "$T/conc.tsv" | sort -g | tail -1)
    C_GROW_HWM=$(awk '{print $8}' "$T/conc.tsv" | median)
    A_GROW=$(awk -v b="$UP_RSS0" '$2 > m {m = $2}
                 END { printf "%.2f", (m - b) / 1024 }' "$T/rss-a.tsv")
    C_PASS=$(awk -v g="$C_GROW_MAX" 'BEGIN { print g <= 17 ? "met" : "missed" }')

    cat > "$T/upload.dat" <<EOF
"curl direct" $U_DIRECT
"proxy_pass" $U_PROXY
"cloudauth" $U_CA
"md5=on" $U_MD5ON
"cloudauth x$CONC" $C_AGG
EOF

    if command -v gnuplot > /dev/null; then
        gnuplot <<EOF
set terminal png size 640,400 noenhanced
set style data histograms
set style fill solid 0.6
set boxwidth 0.7
set grid ytics
set yrange [0:*]
set output "$B/upload-throughput.png"
set title "Upload into the GCS stand-in, MB/s: one ${UPLOAD_MB} MiB upload, and $CONC x ${CONC_MB} MiB at once (median of $ROUNDS)" font ",10"
plot "$T/upload.dat" using 2:xtic(1) notitle
EOF
    fi

    cat > "$T/upload.md" <<EOF
## $SEC4. Upload throughput and memory ($SINK_WHAT)

Raw bodies (\`curl -T\`, random bytes, length known) into
[\`bench/gcs_sink.c\`](gcs_sink.c), a stand-in for GCS's upload API in C (one
process, epoll, keep-alive; keeps no bytes, checks CRC32C, MD5 optional),
here $SINK_WHAT (\`SINK_DELAY=$SINK_DELAY SINK_TLS=$SINK_TLS\`): what
proxy_pass and curl send it pays the same.
MB = 10⁶ bytes. Gateway nginx on CPU 0 (one worker), the stand-in and the
client curl on CPU 1 — except curl straight to the stand-in, which takes CPU
0 (the gateway's) so that the stand-in keeps its own core. Both gateway
locations read the body with \`client_body_buffer_size $UPLOAD_BODY_BUF\`.
Load average at the end: $U_LOAD (a shared machine: the MB/s are noisy, the
ratios of interleaved rounds and the CPU per GiB less so).

**The stand-in alone** (curl → stand-in, ${UPLOAD_MB} MiB, median of
$ROUNDS): $S_NOMD5 MB/s without MD5, $S_MD5 MB/s with it; by its own CPU
time it could take $S_CAP_NOMD5 MB/s without MD5 and $S_CAP_MD5 MB/s with
it. The runs below use it without MD5 (\`-M\`): it still checks the CRC32C
the module sends.

**One ${UPLOAD_MB} MiB upload** (rounds interleaved, median of $ROUNDS):

| path | MB/s | vs curl → stand-in | vs proxy_pass | worker CPU s per GiB |
|---|---|---|---|---|
| curl → stand-in (\`uploadType=media\`) | $U_DIRECT | 1.000 | $(ratio "$U_DIRECT" "$U_PROXY") | – |
| nginx \`proxy_pass\`, \`proxy_request_buffering off\` (media) | $U_PROXY | $(ratio "$U_PROXY" "$U_DIRECT") | 1.000 | $U_PROXY_CPU |
| **\`cloudauth_gcs_upload\`** (default: one request up to the last 256 KiB mark, then the final one; CRC32C only) | $U_CA | **$(ratio "$U_CA" "$U_DIRECT")** | **$(ratio "$U_CA" "$U_PROXY")** | $U_CA_CPU |
| \`cloudauth_gcs_upload chunk_size=8m\` (a request per 8 MiB, as before) | $U_CHUNKS | $(ratio "$U_CHUNKS" "$U_DIRECT") | $(ratio "$U_CHUNKS" "$U_PROXY") | $U_CHUNKS_CPU |
| \`cloudauth_gcs_upload md5=on\` (CRC32C and MD5) | $U_MD5ON | $(ratio "$U_MD5ON" "$U_DIRECT") | $(ratio "$U_MD5ON" "$U_PROXY") | $U_MD5ON_CPU |

Targets: the default ≥ $( [ "$SINK_DELAY" = 0 ] && echo 0.95 || echo 0.9 )× proxy_pass — $(awk -v a="$U_CA" -v b="$U_PROXY" -v t="$( [ "$SINK_DELAY" = 0 ] && echo 0.95 || echo 0.9 )" \
'BEGIN { print ((a / b >= t) ? "met" : "missed") }'); worker CPU per GiB ≤ 1.5×
proxy_pass's — $(awk -v a="$U_CA_CPU" -v b="$U_PROXY_CPU" \
'BEGIN { printf "%.2f×, %s", a / b, (a / b <= 1.5) ? "met" : "missed" }').

Failed uploads: $U_BAD. Worker RSS, one upload at a time: +$A_GROW MiB at the
peak over the start.

**$CONC concurrent ${CONC_MB} MiB uploads** through \`cloudauth_gcs_upload\`
(a fresh nginx each round; the worker's VmRSS sampled every 100 ms; median of
$ROUNDS rounds): **$C_AGG MB/s** aggregate, proxy_pass $C_PROXY MB/s in the
same rounds ($(ratio "$C_AGG" "$C_PROXY")×); $C_OK of $((CONC * ROUNDS))
stored whole (size and CRC32C checked by the stand-in and the module);
worker CPU $C_CPU s per GiB; worker RSS growth **$C_GROW MiB
per upload** (peak VmRSS − VmRSS before, ÷ $CONC; worst round $C_GROW_MAX
MiB; by VmHWM $C_GROW_HWM MiB).

Target: RSS growth ≤ 17 MiB per upload — $C_PASS.

MD5 alone costs $MD5_S s per GiB on this core (\`openssl speed md5\`).

**Where the worker's cycles go** (\`perf record\` of the worker during
256 MiB uploads at the defaults, plain HTTP, on this machine, 2026-12-07):
about 70 % in the kernel (the client's socket read 10 %, the write to the
stand-in 11 %, the rest TCP and the hypervisor's interrupt handling),
CRC32C 17 % (\`ngx_cloudauth_crc32c_hw\`: one \`crc32\` instruction after
the other; three interleaved streams would take about a third of that —
the largest lever left), the one copy into curl's buffer 6 %, curl and
nginx themselves little. proxy_pass pays the kernel's part and neither
CRC32C nor the copy. Faulting in a fresh buffer's pages was the largest
cost of each request in a series of 8 MiB tus \`PATCH\`es (about 9 ms of
CPU each, more than moving the 8 MiB), hence the buffer a worker keeps.

![upload MB/s](upload-throughput.png)

\`\`\`
stand-in alone (what round MB/s code bytes s; cpu-md5-*: cpu_s capacity_MB/s)
$(cat "$T/sink.tsv")

one upload (variant round MB/s code bytes s worker_cpu_s)
$(cat "$T/upload.tsv")

concurrent (round agg_MB/s stored rss0_KiB peak_KiB hwm_KiB
            MiB/upload MiB/upload_by_hwm worker_cpu_s proxy_agg_MB/s)
$(cat "$T/conc.tsv")
\`\`\`
EOF
}

# 6. thousands of subjects (defined here, run after 5) ----------------------

# a field of the status page's JSON: scale_status QUERY PERL-EXPRESSION
scale_status() {
    curl -sf "http://127.0.0.1:$GW6/status?$1" \
        | perl -MJSON::PP -e 'local $/; $_ = decode_json(<STDIN>);
                              print eval($ARGV[0]) // "", "\n"' "$2"
}

# the status page's answer time in ms, median of 21: scale_status_ms QUERY
scale_status_ms() {
    for _ in $(seq 21); do
        $LOAD_CPU curl -sf -o /dev/null -w '%{time_total}\n' \
            "http://127.0.0.1:$GW6/status?$1"
    done | median | awk '{ printf "%.1f", $1 * 1000 }'
}

bench_scale() {
    local r n v res used0 used1 t0 t1 warm_s total ok

    TOK6=$(port)
    perl "$B/fake_token.pl" "$TOK6" 0 3600 - "$SCALE_TOKEN_LEN" &
    PIDS+=($!)
    wait_port "$TOK6"

    GW6=$(port)
    start_nginx scale "$GW_CPU" <<EOF
load_module $MODULE;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    $(temps scale)
    keepalive_requests 1000000;
    cloudauth_zone 16m;
    cloudauth_credential people type=google_service_account
        key_file=$T/sa.json scopes=https://www.googleapis.com/auth/drive
        "subjects=user\\d{5}@example\\.com"
        token_url=http://127.0.0.1:$TOK6/token;
    upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$GW6 backlog=4096;
        location / {
            cloudauth people;
            cloudauth_subject \$http_x_user;
            $LOC_PROXY
            proxy_pass http://up;
        }
        location /warm/ {
            cloudauth people;
            cloudauth_subject \$arg_u;
            $LOC_PROXY
            proxy_pass http://up;
        }
        location = /status { cloudauth_status; }
    }
}
EOF
    wait_port "$GW6"

    # the zone's pages in use before and after SUBJECTS entries
    used0=$(scale_status limit=0 '$_->{zone}{used}')

    echo "== scale: $SUBJECTS subjects into the cache"
    t0=$(date +%s.%N)
    ok=$($LOAD_CPU curl -s -Z --parallel-max 32 -w 'CODE %{http_code}\n' \
             "http://127.0.0.1:$GW6/warm/?u=user[00001-$(printf %05d \
              "$SUBJECTS")]@example.com" 2> /dev/null | grep -c '^CODE 200$' || true)
    t1=$(date +%s.%N)
    warm_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    total=$(scale_status limit=0 '$_->{credentials}{people}{entries_total}')
    used1=$(scale_status limit=0 '$_->{zone}{used}')
    echo "== scale: $ok of $SUBJECTS answered 200 in $warm_s s;" \
         "entries_total $total; zone used $used0 -> $used1 bytes"

    SC_PER=$(awk -v a="$used0" -v b="$used1" -v n="$total" \
             'BEGIN { printf "%.0f", (b - a) / n }')
    SC_PER_MB=$(awk -v p="$SC_PER" 'BEGIN { printf "%.0f", 1048576 / p }')

    # the status page with SUBJECTS entries
    SC_ST_DEF=$(scale_status_ms "")
    SC_ST_ZERO=$(scale_status_ms "limit=0")
    SC_ST_ALL=$(scale_status_ms "limit=1000")
    SC_ST_ALL_KB=$(curl -sf "http://127.0.0.1:$GW6/status?limit=1000" \
                   | wc -c | awk '{ printf "%.0f", $1 / 1024 }')
    echo "== scale: status $SC_ST_DEF ms, limit=0 $SC_ST_ZERO ms," \
         "limit=1000 $SC_ST_ALL ms"

    # the same script: a random one of SUBJECTS, or always the same one
    # a round of each not counted first (the rounds after it ran faster:
    # caches, clocks), then the pairs in turn one-many and many-one
    echo "== scale: $ROUNDS rounds of ${DUR}s, one subject and $SUBJECTS"
    for n in 1 "$SUBJECTS"; do
        run_wrk "$DUR" "http://127.0.0.1:$GW6/" -s "$B/subjects.lua" -- "$n" \
            > /dev/null
    done
    : > "$T/scale.tsv"
    for r in $(seq "$ROUNDS"); do
        order="one many"
        [ $((r % 2)) = 0 ] && order="many one"
        for v in $order; do
            [ $v = one ] && n=1 || n=$SUBJECTS
            res=$(run_wrk "$DUR" "http://127.0.0.1:$GW6/" \
                  -s "$B/subjects.lua" -- "$n")
            echo "$v $r $res" | tee -a "$T/scale.tsv"
        done
    done

    SC_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
    SC_FETCHES=$(scale_status limit=0 '$_->{credentials}{people}{fetches}')
    SC_TOTAL=$(scale_status limit=0 \
               '$_->{credentials}{people}{entries_total}')
    stop_nginx scale

    sc() { awk -v v="$1" -v c="$2" '$1 == v {print $c}' "$T/scale.tsv" \
           | median; }
    SC_ONE=$(sc one 3);     SC_MANY=$(sc many 3)
    SC_ONE_P99=$(sc one 5); SC_MANY_P99=$(sc many 5)
    SC_BAD=$(awk '{s += $6} END {print s + 0}' "$T/scale.tsv")
    # the ratio of each round's pair, their median: drift between rounds
    # (the machine's other load) cancels within a pair
    SC_RATIO=$(awk '$1 == "one" {o[$2] = $3} $1 == "many" {m[$2] = $3}
                    END { for (r in o) if (o[r] > 0)
                              printf "%.3f\n", m[r] / o[r] }' \
               "$T/scale.tsv" | median)

    cat > "$T/scale.md" <<EOF
## 6. Thousands of subjects

$SUBJECTS subjects of one \`google_service_account\` credential with
\`subjects=\` cached ($warm_s s to fetch them all, 32 at a time: $ok
answered 200; entries_total $total), tokens of $SCALE_TOKEN_LEN bytes,
\`cloudauth_zone 16m\`, one worker. The same wrk script
([\`bench/subjects.lua\`](subjects.lua), an \`X-User\` header per request)
picks one of the $SUBJECTS subjects at random, or always the same one;
$CONNS connections; a round of each not counted, then $ROUNDS rounds of a
pair (in turn one-many, many-one); requests/s are medians, the ratio is the
median of the pairs' ratios.

| subjects | requests/s | ratio | p99 ms |
|---|---|---|---|
| one | $SC_ONE | 1.000 | $SC_ONE_P99 |
| **$SUBJECTS, at random** | $SC_MANY | **$SC_RATIO** | $SC_MANY_P99 |

Target: ≥ 0.95×. Non-2xx answers (all runs): $SC_BAD; token requests
during the runs: $((SC_FETCHES - total)) (entries at the end: $SC_TOTAL).
Load average after the runs: $SC_LOAD ($(nproc) cores; other load makes
the rounds vary, see the raw data).

**Zone memory:** $used0 → $used1 bytes of the zone in use (whole pages)
for $total entries: **$SC_PER bytes per entry, $SC_PER_MB entries per
MiB** (with $SCALE_TOKEN_LEN-byte tokens).

**Status page** with $SUBJECTS entries (curl, median of 21):

| query | ms |
|---|---|
| \`/status\` (100 entries listed) | $SC_ST_DEF |
| \`/status?limit=0\` (sums only: the walk of the zone) | $SC_ST_ZERO |
| \`/status?limit=1000\` (the most a page lists, $SC_ST_ALL_KB KiB of JSON) | $SC_ST_ALL |

\`\`\`
scale (variant round rps p50 p99 non2xx)
$(cat "$T/scale.tsv")
\`\`\`
EOF
}

# ONLY=scale: section 6 alone, put in place of the one in RESULTS.md, or
# before its raw data
only_scale() {
    bench_scale
    if [ -f "$B/RESULTS.md" ] && grep -q '^## 6\. ' "$B/RESULTS.md"; then
        perl -0pi -e '
            BEGIN { local $/; open my $f, "<", shift @ARGV; $new = <$f> }
            s/^## 6\. .*?(?=^## |\z)/$new\n/ms' \
            "$T/scale.md" "$B/RESULTS.md"
    elif [ -f "$B/RESULTS.md" ] && grep -q '^## Raw data' "$B/RESULTS.md"
    then
        perl -0pi -e '
            BEGIN { local $/; open my $f, "<", shift @ARGV; $new = <$f> }
            s/^(?=## Raw data)/$new\n/m' \
            "$T/scale.md" "$B/RESULTS.md"
    else
        { echo "# Benchmark results"; echo; cat "$T/scale.md"; } \
            > "$B/RESULTS.md"
    fi
    echo "== wrote section 6 of $B/RESULTS.md"
}

# ONLY=upload: section 4 alone, put in place of the one in RESULTS.md
only_upload() {
    bench_upload
    if [ -f "$B/RESULTS.md" ] && grep -q "^## $SEC4\\. " "$B/RESULTS.md"; then
        SEC="$SEC4" perl -0pi -e '
            BEGIN { local $/; open my $f, "<", shift @ARGV; $new = <$f> }
            s/^## \Q$ENV{SEC}\E\. .*?(?=^## |\z)/$new\n/ms' \
            "$T/upload.md" "$B/RESULTS.md"
    elif [ -f "$B/RESULTS.md" ] && grep -q '^## 5\. ' "$B/RESULTS.md"; then
        perl -0pi -e '
            BEGIN { local $/; open my $f, "<", shift @ARGV; $new = <$f> }
            s/^(?=## 5\. )/$new\n/ms' \
            "$T/upload.md" "$B/RESULTS.md"
    else
        { echo "# Benchmark results"; echo; cat "$T/upload.md"; } \
            > "$B/RESULTS.md"
    fi
    echo "== wrote section $SEC4 of $B/RESULTS.md"
}

if [ "$ONLY" = upload ]; then
    only_upload
    exit 0
fi

# 7. resumable uploads (tus) -------------------------------------------------

# the gateway for section 7: one resumable=on location with default
# settings (plain PUT and tus alike), and proxy_pass as in section 4
tus_conf() {
    cat <<EOF
load_module $MODULE;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    $(temps tus)
    client_max_body_size $((UPLOAD_MB + 1))m;
    client_body_buffer_size $UPLOAD_BODY_BUF;
    $SINK_CA_CONF
    cloudauth_credential google type=google_service_account
        key_file=$T/sa.json
        scopes=https://www.googleapis.com/auth/devstorage.read_write
        token_url=http://127.0.0.1:$TOK6/token;
    upstream sink { server 127.0.0.1:$SINKP; keepalive 64; }
    server {
        listen 127.0.0.1:$GW6 backlog=4096;
        location /proxy/ {
            rewrite ^/proxy/(.*)\$
                /upload/storage/v1/b/bench/o?uploadType=media&name=\$1 break;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass $SINK_SCHEME://sink;
        }
        location /tus/ {
            cloudauth_gcs_upload google bucket=bench overwrite=on
                resumable=on endpoint=$SINK_SCHEME://127.0.0.1:$SINKP;
        }
    }
}
EOF
}

# tus_create NAME SIZE: POST, prints the upload's path (Location)
tus_create() {
    curl -s -o /dev/null -D - -X POST -H 'Tus-Resumable: 1.0.0' \
        -H 'Content-Length: 0' \
        -H "Upload-Length: $2" \
        -H "Upload-Metadata: filename $(printf %s "$1" | base64 -w0)" \
        "http://127.0.0.1:$GW6/tus/" \
        | awk -F': ' 'tolower($1) == "location" { sub(/\r$/, "", $2); print $2 }'
}

# one upload by tus, POST then one PATCH of the whole file:
# "MB/s http_code bytes seconds upload_offset"
tus_upload() {
    local loc t0 t1 res
    t0=$(date +%s.%N)
    loc=$(tus_create "$2" "$(stat -c %s "$1")")
    res=$($LOAD_CPU curl -s -X PATCH -T "$1" -H 'Expect:' \
              -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
              -H 'Content-Type: application/offset+octet-stream' \
              -D "$T/tus.hdr" -o /dev/null \
              -w '%{http_code} %{size_upload}\n' \
              "http://127.0.0.1:$GW6$loc" || true)
    t1=$(date +%s.%N)
    echo "$res" | awk -v t0="$t0" -v t1="$t1" \
        -v off="$(awk -F': ' 'tolower($1) == "upload-offset" {
                      sub(/\r$/, "", $2); print $2 }' "$T/tus.hdr")" '
        { printf "%.1f %s %s %.3f %s\n", $2 / (t1 - t0) / 1e6, $1, $2,
                 t1 - t0, off }'
}

# one upload by tus, POST then PATCHes of the pieces in DIR (split -b 8m),
# one curl on one connection (--next): "MB/s http_code bytes seconds
# upload_offset"
tus_upload_pieces() {
    local loc t0 t1 res off p args size
    size=$(stat -c %s "$1")
    t0=$(date +%s.%N)
    loc=$(tus_create "$2" "$size")
    off=0
    args=()
    for p in "$3"/piece.*; do
        [ ${#args[@]} -gt 0 ] && args+=(--next)
        args+=(-s -X PATCH -T "$p" -H 'Expect:' -H 'Tus-Resumable: 1.0.0'
               -H "Upload-Offset: $off"
               -H 'Content-Type: application/offset+octet-stream'
               -D "$T/tus.hdr" -o /dev/null
               -w '%{http_code} %{size_upload}\n'
               "http://127.0.0.1:$GW6$loc")
        off=$((off + 8388608))    # split -b 8m: no stat per piece timed
    done
    res=$($LOAD_CPU curl "${args[@]}" | awk '{ c = $1; n += $2 }
              END { print c, n }' || true)
    t1=$(date +%s.%N)
    echo "$res" | awk -v t0="$t0" -v t1="$t1" \
        -v off="$(awk -F': ' 'tolower($1) == "upload-offset" {
                      sub(/\r$/, "", $2); print $2 }' "$T/tus.hdr")" '
        { printf "%.1f %s %s %.3f %s\n", $2 / (t1 - t0) / 1e6, $1, $2,
                 t1 - t0, off }'
}

# tus_cuts FILE LOC CUT...: PATCHes from the offset the gateway reports
# that the client breaks off after CUT bytes each (it closes its
# connection), then one that sends the rest; after each break, HEAD (until
# two answers 0.2 s apart agree: the gateway may still be storing) tells
# the offset.  Prints "cut_at offset_after resent" per break, then
# "final STATUS OFFSET".
tus_cuts() {
    $LOAD_CPU perl -MIO::Socket::INET -MTime::HiRes=sleep -e '
        my ($port, $file, $loc, @cuts) = @ARGV;
        my $size = -s $file;
        open my $fh, "<:raw", $file or die "$file: $!";

        sub req {
            my ($method, $off, $len, $stop) = @_;
            my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1",
                                          PeerPort => $port) or die "$!";
            my $h = "$method $loc HTTP/1.1\r\nHost: bench\r\n"
                  . "Tus-Resumable: 1.0.0\r\nConnection: close\r\n";
            $h .= "Upload-Offset: $off\r\nContent-Length: $len\r\n"
                . "Content-Type: application/offset+octet-stream\r\n"
                if $method eq "PATCH";
            print $s "$h\r\n";
            if ($method eq "PATCH") {
                sysseek $fh, $off, 0;
                my $left = defined $stop ? $stop : $len;
                while ($left > 0) {
                    my $n = sysread $fh, my $buf,
                                    $left > 1048576 ? 1048576 : $left;
                    last unless $n;
                    syswrite $s, $buf or last;
                    $left -= $n;
                }
                if (defined $stop) {
                    close $s;
                    return undef;
                }
            }
            local $/;
            my $ans = <$s> // "";
            my ($st) = $ans =~ m{^HTTP/1\.1 (\d+)};
            my ($o) = $ans =~ m{^Upload-Offset: (\d+)}mi;
            return [$st // 0, $o // -1];
        }

        sub offset {
            my $prev = -2;
            for (1 .. 100) {
                my $o = req("HEAD")->[1];
                return $o if $o == $prev;
                $prev = $o;
                sleep 0.2;
            }
            return $prev;
        }

        my $off = 0;
        for my $cut (@cuts) {
            my $at = $off + $cut;
            req("PATCH", $off, $size - $off, $cut);
            my $now = offset();
            printf "%d %d %d\n", $at, $now, $at - $now;
            $off = $now;
        }
        my $r = req("PATCH", $off, $size - $off);
        print "final $r->[0] $r->[1]\n";
    ' "$GW6" "$1" "$2" "${@:3}"
}

bench_tus() {
    local r v res t_start D loc cpu0

    t_start=$(date +%s)
    T_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
    TUS_BYTES=$((UPLOAD_MB * 1024 * 1024))

    mkdir -p "$(dirname "$SINK")"
    cc -O2 -Wall -o "$SINK" "$B/gcs_sink.c" -lssl -lcrypto

    UPLOAD_DIR=${UPLOAD_DIR:-$(mktemp -d /dev/shm/cloudauth-bench.XXXXXX \
                               2> /dev/null)} || UPLOAD_DIR=""
    D=${UPLOAD_DIR:-$T}
    [ -f "$D/upload.bin" ] \
        && [ "$(stat -c %s "$D/upload.bin")" = "$TUS_BYTES" ] \
        || head -c "$TUS_BYTES" /dev/urandom > "$D/upload.bin"
    head -c 1000 "$D/upload.bin" > "$D/warm.bin"
    rm -rf "$D/pieces"
    mkdir -p "$D/pieces"
    split -b 8m -d -a 4 "$D/upload.bin" "$D/pieces/piece."

    # TUS_SINK_MD5=1: the stand-in computes MD5 and reports md5Hash (its
    # MD5 then caps what it takes, see section 4)
    SINKP=$(port)
    if [ "${TUS_SINK_MD5:-0}" = 1 ]; then
        $LOAD_CPU "$SINK" "${SINK_OPTS[@]}" "$SINKP" \
            > /dev/null 2>> "$T/sink.log" &
    else
        $LOAD_CPU "$SINK" "${SINK_OPTS[@]}" -M "$SINKP" \
            > /dev/null 2>> "$T/sink.log" &
    fi
    PIDS+=($!)
    wait_port "$SINKP"

    TOK6=$(port)
    perl "$B/fake_token.pl" "$TOK6" 0 3600 "$T/tus-token.log" &
    PIDS+=($!)
    wait_port "$TOK6"

    GW6=$(port)
    tus_conf | start_nginx tus "$GW_CPU"
    wait_port "$GW6"

    # warm: the token, the keep-alive connections
    upload_curl "$LOAD_CPU" "$D/warm.bin" \
        "http://127.0.0.1:$GW6/proxy/warm" "$T/up.out" > /dev/null
    upload_curl "$LOAD_CPU" "$D/warm.bin" \
        "http://127.0.0.1:$GW6/tus/warm" "$T/up.out" > /dev/null
    tus_upload "$D/warm.bin" warm-tus > /dev/null

    echo "== tus: ${UPLOAD_MB} MiB, $ROUNDS rounds of proxy, put, tus, tus8"
    : > "$T/tus.tsv"
    for r in $(seq "$ROUNDS"); do
        for v in proxy put tus tus8; do
            cpu0=$(upload_cpu tus)
            case $v in
            proxy)
                res=$(upload_curl "$LOAD_CPU" "$D/upload.bin" \
                      "http://127.0.0.1:$GW6/proxy/proxy-$r" "$T/up.out") ;;
            put)
                res=$(upload_curl "$LOAD_CPU" "$D/upload.bin" \
                      "http://127.0.0.1:$GW6/tus/put-$r" "$T/up.out")
                grep -Eq "\"size\": *\"?$TUS_BYTES\"?[,}]" "$T/up.out" \
                    || res="$res BAD" ;;
            tus)
                res=$(tus_upload "$D/upload.bin" "tus-$r")
                [ "$(echo "$res" | awk '{print $2, $5}')" \
                  = "204 $TUS_BYTES" ] || res="$res BAD" ;;
            tus8)
                res=$(tus_upload_pieces "$D/upload.bin" "tus8-$r" \
                      "$D/pieces")
                [ "$(echo "$res" | awk '{print $2, $5}')" \
                  = "204 $TUS_BYTES" ] || res="$res BAD" ;;
            esac
            # the worker's CPU seconds, last field
            res="$res $(awk -v a="$cpu0" -v b="$(upload_cpu tus)" \
                        'BEGIN { printf "%.2f", b - a }')"
            echo "$v $r $res" | tee -a "$T/tus.tsv"
        done
    done

    # interruptions: one upload broken off three times at odd places
    echo "== tus: ${UPLOAD_MB} MiB broken off 3 times"
    loc=$(tus_create cut "$TUS_BYTES")
    tus_cuts "$D/upload.bin" "$loc" \
        $((TUS_BYTES / 10 + 12345)) $((TUS_BYTES / 3 + 777)) \
        $((TUS_BYTES / 5 + 99)) | tee "$T/tus-cuts.tsv"

    stop_nginx tus
    tus_results
    TUS_SECONDS=$(( $(date +%s) - t_start ))
    echo "== tus: section took $TUS_SECONDS s"
}

tus_results() {
    col() { awk -v v="$1" -v c="$2" '$1 == v && !/BAD/ {print $c}' "$3" \
            | median; }
    T_PROXY=$(col proxy 3 "$T/tus.tsv")
    T_PUT=$(col put 3 "$T/tus.tsv")
    T_TUS=$(col tus 3 "$T/tus.tsv")
    T_TUS8=$(col tus8 3 "$T/tus.tsv")
    cpu() { awk -v v="$1" -v m="$UPLOAD_MB" '$1 == v && !/BAD/ {
                printf "%.2f\n", $NF * 1024 / m }' "$T/tus.tsv" | median; }
    T_PROXY_CPU=$(cpu proxy)
    T_PUT_CPU=$(cpu put)
    T_TUS_CPU=$(cpu tus)
    T_TUS8_CPU=$(cpu tus8)
    if [ "${TUS_SINK_MD5:-0}" = 1 ]; then
        T_SINK="with MD5, \`TUS_SINK_MD5=1\`: its MD5 caps what it takes,
so the MB/s compare under that cap and the worker's CPU per GiB tells the
gateway's cost"
    else
        T_SINK="the stand-in without MD5 (\`-M\`)"
    fi
    T_BAD=$(awk '/BAD/ || ($1 !~ /^tus/ && $4 !~ /^2/)' "$T/tus.tsv" | wc -l)
    T_FINAL=$(awk '$1 == "final" {print $2, $3}' "$T/tus-cuts.tsv")
    T_RESENT=$(awk '$1 != "final" { printf "%s%.2f MiB", s, $3 / 1048576
                                    s = ", " }' "$T/tus-cuts.tsv")
    T_RESENT_MAX=$(awk '$1 != "final" && $3 > m { m = $3 }
                        END { print m + 0 }' "$T/tus-cuts.tsv")

    cat > "$T/tus.md" <<EOF
## $SEC7. Resumable uploads (tus) ($SINK_WHAT)

One \`resumable=on\` location with default settings (no \`chunk_size=\`: a
body of known length goes to GCS as one request up to its last 256 KiB mark;
\`md5=off\`) in front of the stand-in of section $SEC4 ($T_SINK; $SINK_WHAT), one worker on
CPU 0, curl on CPU 1; ${UPLOAD_MB} MiB of random bytes, rounds interleaved,
median of $ROUNDS. tus: \`POST\` (creation), then one \`PATCH\` of the
whole file, timed together.

| path | MB/s | vs single PUT | vs proxy_pass | worker CPU s per GiB |
|---|---|---|---|---|
| nginx \`proxy_pass\`, \`proxy_request_buffering off\` (media) | $T_PROXY | $(ratio "$T_PROXY" "$T_PUT") | 1.000 | $T_PROXY_CPU |
| single \`PUT\` to the \`resumable=on\` location | $T_PUT | 1.000 | **$(ratio "$T_PUT" "$T_PROXY")** | $T_PUT_CPU |
| **tus \`POST\` + \`PATCH\`**, same location | $T_TUS | **$(ratio "$T_TUS" "$T_PUT")** | $(ratio "$T_TUS" "$T_PROXY") | $T_TUS_CPU |
| tus \`POST\` + \`PATCH\`es of 8 MiB (one curl, one connection) | $T_TUS8 | $(ratio "$T_TUS8" "$T_PUT") | $(ratio "$T_TUS8" "$T_PROXY") | $T_TUS8_CPU |

Targets: tus ≥ 0.9× the single PUT; 8 MiB \`PATCH\`es ≥ 0.9× one whole-file
\`PATCH\` ($(ratio "$T_TUS8" "$T_TUS")× here); default settings ≥ 0.95×
proxy_pass (0.9× with latency).
Failed uploads: $T_BAD.

**Bytes sent again after an interruption.** One ${UPLOAD_MB} MiB tus upload
whose \`PATCH\` the client broke off (closed its connection) three times at
odd byte counts; after each, \`HEAD\` gave the offset the gateway holds
(asked until two answers 0.2 s apart agree) and the next \`PATCH\` went on
from there. Sent again: $T_RESENT (largest $(awk -v m="$T_RESENT_MAX" \
'BEGIN { printf "%.2f", m / 1048576 }') MiB). By default a \`PATCH\`'s
bytes go to GCS in one request as they come; when its client goes, the
gateway breaks that request off. GCS keeps what it received of a broken
request (its status query says how much); **the stand-in keeps nothing of
one**, so here each cut sends the \`PATCH\`'s bytes again from its start:
the worst case, not GCS's. With \`chunk_size=\` the gateway stores the
whole 256 KiB blocks it has read and less than 256 KiB is sent again.
Final \`PATCH\`: $T_FINAL (status, offset). Load average at the start:
$T_LOAD (the machine is shared; the MB/s are noisy, the CPU per GiB
less so).

\`\`\`
one upload (variant round MB/s code bytes s [upload_offset] worker_cpu_s)
$(cat "$T/tus.tsv")

broken off (at_byte offset_after resent)
$(cat "$T/tus-cuts.tsv")
\`\`\`
EOF
}

# ONLY=tus: section 7 alone, put in place of the one in RESULTS.md
only_tus() {
    bench_tus
    if [ -f "$B/RESULTS.md" ] && grep -q "^## $SEC7\\. " "$B/RESULTS.md"; then
        SEC="$SEC7" perl -0pi -e '
            BEGIN { local $/; open my $f, "<", shift @ARGV; $new = <$f> }
            s/^## \Q$ENV{SEC}\E\. .*?(?=^## |\z)/$new\n/ms' \
            "$T/tus.md" "$B/RESULTS.md"
    elif [ -f "$B/RESULTS.md" ] && grep -q '^## Raw data' "$B/RESULTS.md"; then
        perl -0pi -e '
            BEGIN { local $/; open my $f, "<", shift @ARGV; $new = <$f> }
            s/^(?=## Raw data)/$new\n/ms' \
            "$T/tus.md" "$B/RESULTS.md"
    else
        { echo "# Benchmark results"; echo; cat "$T/tus.md"; } \
            > "$B/RESULTS.md"
    fi
    echo "== wrote section $SEC7 of $B/RESULTS.md"
}

if [ "$ONLY" = tus ]; then
    only_tus
    exit 0
fi


UP=$(port)
start_nginx up "$LOAD_CPU" <<EOF
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    $(temps up)
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
wait_port "$UP"

LOC_PROXY='proxy_http_version 1.1; proxy_set_header Connection "";'

if [ "$ONLY" = scale ]; then
    only_scale
    exit 0
fi

# 1. hot path ------------------------------------------------------------

TOK=$(port)
perl "$B/fake_token.pl" "$TOK" 0 3600 "$T/hot-token.log" &
PIDS+=($!)
wait_port "$TOK"

GW=$(port)
LOC_PROXY='proxy_http_version 1.1; proxy_set_header Connection "";'
start_nginx hot "$GW_CPU" <<EOF
load_module $MODULE;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    $(temps hot)
    keepalive_requests 1000000;
    cloudauth_credential google type=google_service_account
        key_file=$T/sa.json scopes=https://www.googleapis.com/auth/drive
        token_url=http://127.0.0.1:$TOK/token;
    lua_shared_dict tokens 1m;
    init_by_lua_block { ngx.shared.tokens:set("google", "ya29.lua-token") }
    upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$GW backlog=4096;
        location /static/ {
            $LOC_PROXY
            proxy_set_header Authorization "Bearer ya29.static-token";
            proxy_pass http://up;
        }
        location /cloudauth/ {
            cloudauth google;
            $LOC_PROXY
            proxy_pass http://up;
        }
        location /lua/ {
            access_by_lua_block {
                ngx.req.set_header("Authorization",
                                   "Bearer " .. ngx.shared.tokens:get("google"))
            }
            $LOC_PROXY
            proxy_pass http://up;
        }
        location /authreq/ {
            auth_request /_token;
            auth_request_set \$vended \$sent_http_x_token;
            $LOC_PROXY
            proxy_set_header Authorization "Bearer \$vended";
            proxy_pass http://up;
        }
        location = /_token {
            internal;
            add_header X-Token ya29.vended-token;
            return 204;
        }
    }
}
EOF
wait_port "$GW"
curl -sf "http://127.0.0.1:$GW/cloudauth/" > /dev/null

VARIANTS="static cloudauth lua authreq"
: > "$T/hot.tsv"
echo "== hot path: $ROUNDS rounds of ${DUR}s, $CONNS connections"
for r in $(seq "$ROUNDS"); do
    for v in $VARIANTS; do
        res=$(run_wrk "$DUR" "http://127.0.0.1:$GW/$v/")
        echo "$v $r $res" | tee -a "$T/hot.tsv"
    done
done
stop_nginx hot

hot() { awk -v v="$1" -v c="$2" '$1 == v {print $c}' "$T/hot.tsv" | median; }

if [ "$ONLY" = hotpath ]; then
    for v in cloudauth lua authreq; do
        awk -v v="$v" -v a="$(hot $v 3)" -v s="$(hot static 3)" \
            -v p="$(hot $v 5)" -v q="$(hot static 5)" 'BEGIN {
            printf "== hot path: %s %.0f req/s, static %.0f: %.3fx; " \
                   "p99 %.3f ms, static %.3f ms\n", v, a, s, a / s, p, q }'
    done
    exit 0
fi

# 2. cold burst ------------------------------------------------------------

TOK2=$(port)
perl "$B/fake_token.pl" "$TOK2" 0.2 3600 "$T/burst-token.log" &
PIDS+=($!)
wait_port "$TOK2"

: > "$T/burst.tsv"
echo "== cold burst: $BURST concurrent requests, token endpoint 200 ms"
for r in $(seq "$ROUNDS"); do
    GW2=$(port)
    start_nginx burst "" <<EOF
load_module $MODULE;
worker_processes 2;
events { worker_connections 8192; }
http {
    access_log off;
    $(temps burst)
    cloudauth_credential google type=google_service_account
        key_file=$T/sa.json scopes=https://www.googleapis.com/auth/drive
        token_url=http://127.0.0.1:$TOK2/token;
    upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$GW2 backlog=8192;
        location / { cloudauth google; $LOC_PROXY proxy_pass http://up; }
    }
}
EOF
    wait_port "$GW2"
    : > "$T/burst-token.log"
    out=$(ab -q -n "$BURST" -c "$BURST" -s 30 "http://127.0.0.1:$GW2/x" 2>&1)
    p99=$(echo "$out" | awk '/ 99%/ {print $2}')
    pmax=$(echo "$out" | awk '/ 100%/ {print $2}')
    failed=$(echo "$out" | awk '/Failed requests/ {print $3}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $3}')
    fetches=$(wc -l < "$T/burst-token.log")
    echo "$r $fetches $p99 ${failed:-0} ${non2xx:-0} $pmax" \
        | tee -a "$T/burst.tsv"
    stop_nginx burst
    sleep 0.5
done

# 3. refresh under load ---------------------------------------------------

TOK3=$(port)
perl "$B/fake_token.pl" "$TOK3" 0.05 10 "$T/refresh-token.log" &
PIDS+=($!)
wait_port "$TOK3"

GW3=$(port)
start_nginx refresh "$GW_CPU" <<EOF
load_module $MODULE;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    $(temps refresh)
    keepalive_requests 1000000;
    cloudauth_credential google type=google_service_account
        key_file=$T/sa.json scopes=https://www.googleapis.com/auth/drive
        token_url=http://127.0.0.1:$TOK3/token;
    upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$GW3 backlog=4096;
        location / { cloudauth google; $LOC_PROXY proxy_pass http://up; }
    }
}
EOF
wait_port "$GW3"
curl -sf "http://127.0.0.1:$GW3/" > /dev/null

SLICES=$((ROUNDS * 6))
echo "== refresh under load: $SLICES one-second slices, tokens living 10 s"
: > "$T/refresh.tsv"
for s in $(seq "$SLICES"); do
    t0=$(date +%s.%N)
    res=$(run_wrk 1 "http://127.0.0.1:$GW3/")
    t1=$(date +%s.%N)
    echo "$t0 $t1 $res" >> "$T/refresh.tsv"
done
stop_nginx refresh

# slices during which a token request was answered, and the others
awk 'NR == FNR { f[NR] = $1; n = NR; next }
     { during = 0
       for (i = 1; i <= n; i++) if (f[i] >= $1 && f[i] <= $2) during = 1
       print during, $5, $6 }' "$T/refresh-token.log" "$T/refresh.tsv" \
    > "$T/refresh-marked.tsv"
REF_DURING=$(awk '$1 == 1 {print $2}' "$T/refresh-marked.tsv" | median)
REF_OUTSIDE=$(awk '$1 == 0 {print $2}' "$T/refresh-marked.tsv" | median)
REF_ERRORS=$(awk '{s += $3} END {print s + 0}' "$T/refresh-marked.tsv")
REF_FETCHES=$(wc -l < "$T/refresh-token.log")
REF_NDURING=$(awk '$1 == 1' "$T/refresh-marked.tsv" | wc -l)

# 4. upload throughput and memory -------------------------------------------

bench_upload

# 7. resumable uploads (tus), here while the GCS stand-in is built ----------

bench_tus

# 5. signing ---------------------------------------------------------------

echo "== signing"
N=$ROOT/build/nginx
gcc -O2 -o "$T/sign" "$B/sign.c" -I "$N/src/core" -I "$N/src/event" \
    -I "$N/src/event/modules" -I "$N/src/os/unix" -I "$N/objs" \
    -I "$N/src/http" -I "$N/src/http/modules" -I "$N/src/http/v2" \
    -I "$ROOT/ngx_cloudauth_module" -lcrypto
: > "$T/sign.tsv"
for r in $(seq "$ROUNDS"); do
    ours=$($GW_CPU "$T/sign" "$T/sa.pem" 2)
    ref=$($GW_CPU openssl speed -seconds 2 rsa2048 2>/dev/null \
          | awk '/^rsa 2048/ {print $6}')
    echo "$ours $ref" | tee -a "$T/sign.tsv"
done

# 6. thousands of subjects ---------------------------------------------------

bench_scale

# results ------------------------------------------------------------------

S_RPS=$(hot static 3);    C_RPS=$(hot cloudauth 3)
L_RPS=$(hot lua 3);       A_RPS=$(hot authreq 3)
S_P50=$(hot static 4);    C_P50=$(hot cloudauth 4)
L_P50=$(hot lua 4);       A_P50=$(hot authreq 4)
S_P99=$(hot static 5);    C_P99=$(hot cloudauth 5)
L_P99=$(hot lua 5);       A_P99=$(hot authreq 5)

B_FETCH=$(awk '{print $2}' "$T/burst.tsv" | median)
B_FETCH_MAX=$(awk '{print $2}' "$T/burst.tsv" | sort -g | tail -1)
B_P99=$(awk '{print $3}' "$T/burst.tsv" | median)
B_BAD=$(awk '{s += $4 + $5} END {print s + 0}' "$T/burst.tsv")
B_MAX=$(awk '{print $6}' "$T/burst.tsv" | median)

SIGN=$(awk '{print $1}' "$T/sign.tsv" | median)
OSSL=$(awk '{print $2}' "$T/sign.tsv" | median)

cat > "$T/hot.dat" <<EOF
static $(ratio "$S_RPS" "$S_RPS") $S_P99
cloudauth $(ratio "$C_RPS" "$S_RPS") $C_P99
lua $(ratio "$L_RPS" "$S_RPS") $L_P99
auth_request $(ratio "$A_RPS" "$S_RPS") $A_P99
EOF

if command -v gnuplot > /dev/null; then
    gnuplot <<EOF
set terminal png size 640,400
set style data histograms
set style fill solid 0.6
set boxwidth 0.7
set grid ytics
set output "$B/hot-path-rps.png"
set title "Hot path: requests/s relative to a static header (median of $ROUNDS)"
set yrange [0:*]
plot "$T/hot.dat" using 2:xtic(1) notitle
set output "$B/hot-path-p99.png"
set title "Hot path: p99 latency, ms (median of $ROUNDS)"
plot "$T/hot.dat" using 3:xtic(1) notitle
EOF
fi

CPU=$(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}')

cat > "$B/RESULTS.md" <<EOF
# Benchmark results

- Machine: $CPU, $(nproc) cores; nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'),
  $(date -u +%Y-%m-%d).
- Reproduce: \`make bench\` (ROUNDS=$ROUNDS DUR=$DUR CONNS=$CONNS BURST=$BURST).
- Method: everything on loopback; gateway nginx ${GW_CPU:+pinned to CPU 0,
  wrk and the upstream to CPU 1}; every location proxies to the same upstream
  with the same keep-alive (\`proxy_http_version 1.1\`, \`Connection ""\`,
  \`keepalive 64\`); rounds interleaved A B C D; medians of $ROUNDS.

## 1. Hot path (token cached)

| variant | requests/s | ratio | p50 ms | p99 ms |
|---|---|---|---|---|
| static \`proxy_set_header Authorization\` (the limit) | $S_RPS | 1.000 | $S_P50 | $S_P99 |
| **cloudauth** | $C_RPS | **$(ratio "$C_RPS" "$S_RPS")** | $C_P50 | $C_P99 |
| Lua, token from \`lua_shared_dict\` | $L_RPS | $(ratio "$L_RPS" "$S_RPS") | $L_P50 | $L_P99 |
| \`auth_request\` to a token-vending location | $A_RPS | $(ratio "$A_RPS" "$S_RPS") | $A_P50 | $A_P99 |

Target: cloudauth ≥ 0.97× the static limit and faster than Lua and
auth_request. cloudauth / Lua: $(ratio "$C_RPS" "$L_RPS");
cloudauth / auth_request: $(ratio "$C_RPS" "$A_RPS").

![requests/s](hot-path-rps.png) ![p99](hot-path-p99.png)

## 2. Cold burst

$BURST concurrent requests (ab) on a cold cache, 2 workers, token endpoint
answering in 200 ms; $ROUNDS runs.

| token requests per burst (median / max) | p99 latency ms | slowest request ms | failed or non-2xx (all runs) |
|---|---|---|---|
| $B_FETCH / $B_FETCH_MAX | $B_P99 | $B_MAX | $B_BAD |

Latencies are medians over the runs. ab starts its connections one after the
other, so the requests opened last wait less than the endpoint's 200 ms; the
slowest request is the one that waited for the whole token request.

Targets: exactly 1 token request; p99 ≤ 250 ms (endpoint latency + 50 ms).

## 3. Refresh under load

Steady load (wrk, $CONNS connections) in $SLICES one-second slices while
tokens live 10 s (refreshed ahead every ~5 s): $REF_FETCHES token requests,
$REF_NDURING slices with a refresh in them.

| p99 in slices with a refresh (ms) | p99 in the others (ms) | ratio | errors |
|---|---|---|---|
| $REF_DURING | $REF_OUTSIDE | $(ratio "$REF_DURING" "$REF_OUTSIDE") | $REF_ERRORS |

Target: within 10 % (ratio ≤ 1.10), zero errors.

$(cat "$T/upload.md")

## 5. Signing

| RS256 assertions/s, one core (module's JWT code) | \`openssl speed rsa2048\` signs/s | ratio |
|---|---|---|
| $SIGN | $OSSL | $(ratio "$SIGN" "$OSSL") |

$(cat "$T/scale.md")

$(cat "$T/tus.md")

## Raw data

\`\`\`
hot path (variant round rps p50 p99 non2xx)
$(cat "$T/hot.tsv")

cold burst (round token_requests p99_ms failed non2xx max_ms)
$(cat "$T/burst.tsv")

signing (ours openssl)
$(cat "$T/sign.tsv")
\`\`\`
EOF

echo "== wrote $B/RESULTS.md"
