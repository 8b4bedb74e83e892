#!/bin/bash
# ngx_cloudauth benchmarks: `make bench`. Everything on loopback; each figure
# is a ratio against a reference measured in the same run, rounds interleaved
# (A B C D A B C D ...), medians quoted. Writes bench/RESULTS.md and PNGs.
#
#   ROUNDS=5 DUR=5 CONNS=32 bench/run.sh

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/bench
MODULE=${MODULE:-$ROOT/build/ngx_http_cloudauth_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-5}
CONNS=${CONNS:-32}
BURST=${BURST:-1000}

T=$(mktemp -d /tmp/cloudauth-bench.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
ulimit -n 65536 2>/dev/null || true

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

# wrk URL -> "rps p50_ms p99_ms non2xx"
run_wrk() {
    $LOAD_CPU wrk -t1 -c"$CONNS" -d"$1"s --latency "$2" | awk '
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

# results ------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

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

## 4. Upload throughput and memory

Not measured by this script yet (see the upload issue).

## 5. Signing

| RS256 assertions/s, one core (module's JWT code) | \`openssl speed rsa2048\` signs/s | ratio |
|---|---|---|
| $SIGN | $OSSL | $(ratio "$SIGN" "$OSSL") |

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
