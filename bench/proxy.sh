#!/usr/bin/env bash
# What a protected request costs, end to end (see BENCHMARKS.md "Forward auth behind nginx").
#
#   bench/proxy.sh                   # 5 rounds of 5 s per configuration
#   bench/proxy.sh --quick           # 3 rounds of 2 s
#   bench/proxy.sh --rounds N --seconds S --records N
#
# One nginx (2 workers) serves a small static file, and wrk (2 threads, 32 connections) asks
# it for that file through each configuration in turn:
#   - no auth: the file as is (every other figure is a ratio to it);
#   - auth_request to `serve` over TCP, and over its HTTP Unix socket (--http unix:),
#     upstream keepalive both;
#   - auth_request to a second nginx that answers `return 204;` over TCP and over a Unix
#     socket: an auth server that does nothing, the ceiling of auth_request (target: serve
#     ≥ 1.0× the ceiling on each transport);
#   - nginx `auth_basic` with a bcrypt htpasswd (what users reach for instead).
# Then wrk straight at `serve` (TCP), for the cost of each way of asking on the check path:
# plain `/check?scope=` with a bearer token, `--routes` (X-Forwarded-Method/-Uri), Basic
# (`--accept basic`) and Envoy's `/ext_authz/` — target: each within 10% of plain /check.
#
# Configurations are measured in rounds, in a rotated order each round (the load of a shared
# machine drifts within seconds); each figure is the median over the rounds of its ratio to
# the baseline of the same round. Nothing asserts a time: it prints a Markdown table. Every
# server listens on 127.0.0.1 or a socket in its temp dir and is stopped on exit.
#
# Environment: TOKENFILE_BIN, GEN_TOKENS_BIN use other builds; CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

records=10000
seconds=5
rounds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) seconds=2; rounds=3 ;;
    --records) records="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "bench/proxy.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "${TOKENFILE_BIN:-}" ] || [ -z "${GEN_TOKENS_BIN:-}" ]; then
  echo "# building release binaries" >&2
  cargo build --release --locked --quiet --bin tokenfile --example gen_tokens
fi
bin="$(realpath "${TOKENFILE_BIN:-$target_dir/release/tokenfile}")"
gen="$(realpath "${GEN_TOKENS_BIN:-$target_dir/release/examples/gen_tokens}")"

. bench/lib.sh
install_if_missing wrk nginx curl htpasswd:apache2-utils
for tool in wrk nginx curl htpasswd; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/proxy.sh: needs $tool" >&2; exit 1; }
done

with_work_dir proxy-bench

# The token file (hashed, `records` records) and a granted token with scope `deploy`.
mkdir "$work/watched"
file="$work/watched/tokens"
"$gen" --records "$records" >"$file"
chmod 600 "$file"
probe=$(( records - 1 - ((records - 1 - 4) % 7) ))
token=$("$gen" --token "$probe")
printf '* /** deploy\n' >"$work/routes"
chmod 600 "$work/routes"

serve_port=$(free_port)
serve_sock="$work/serve-http.sock"
RUST_LOG=warn "$bin" --file "$file" serve --http "127.0.0.1:$serve_port" --http "unix:$serve_sock" \
  --routes "$work/routes" --accept basic,api-key 2>"$work/serve.log" &
pids+=("$!")
wait_for "serve" curl -sf "http://127.0.0.1:$serve_port/healthz"

# The ceiling: an auth server that answers 204 and does nothing else.
ceiling_port=$(free_port)
ceiling_sock="$work/ceiling.sock"
mkdir -p "$work/ceiling"
{
  nginx_prelude "$work/ceiling"
  cat <<EOF
  server {
    listen 127.0.0.1:$ceiling_port;
    listen unix:$ceiling_sock;
    location / { return 204; }
  }
}
EOF
} >"$work/ceiling/nginx.conf"
nginx -p "$work/ceiling" -c "$work/ceiling/nginx.conf" -e "$work/ceiling/error.log" &
pids+=("$!")
wait_for "the ceiling nginx" curl -sf "http://127.0.0.1:$ceiling_port/"

# The front nginx: one server per configuration, the same static file behind each.
mkdir -p "$work/front/static"
head -c 256 /dev/zero | tr '\0' 'x' >"$work/front/static/page.html"
htpasswd -B -b -c "$work/front/htpasswd" bench "$token" 2>/dev/null
declare -A port
for name in none serve_tcp serve_unix ceiling_tcp ceiling_unix basic; do port[$name]=$(free_port); done
auth_server() {  # auth_server NAME UPSTREAM: a server whose every request asks UPSTREAM first
  cat <<EOF
  server {
    listen 127.0.0.1:${port[$1]};
    root $work/front/static;
    location / { auth_request /_auth; }
    location = /_auth {
      internal;
      proxy_pass http://$2/check?scope=deploy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }
  }
EOF
}
{
  nginx_prelude "$work/front"
  cat <<EOF
  upstream serve_tcp { server 127.0.0.1:$serve_port; keepalive 32; }
  upstream serve_unix { server unix:$serve_sock; keepalive 32; }
  upstream ceiling_tcp { server 127.0.0.1:$ceiling_port; keepalive 32; }
  upstream ceiling_unix { server unix:$ceiling_sock; keepalive 32; }
  server {
    listen 127.0.0.1:${port[none]};
    root $work/front/static;
  }
$(auth_server serve_tcp serve_tcp)
$(auth_server serve_unix serve_unix)
$(auth_server ceiling_tcp ceiling_tcp)
$(auth_server ceiling_unix ceiling_unix)
  server {
    listen 127.0.0.1:${port[basic]};
    root $work/front/static;
    auth_basic "bench";
    auth_basic_user_file $work/front/htpasswd;
  }
}
EOF
} >"$work/front/nginx.conf"
nginx -p "$work/front" -c "$work/front/nginx.conf" -e "$work/front/error.log" &
pids+=("$!")
wait_for "the front nginx" curl -sf "http://127.0.0.1:${port[none]}/page.html"

basic="Basic $(printf 'bench:%s' "$token" | base64 -w0)"
bearer="Bearer $token"
# What wrk asks for in each configuration: URL and header.
declare -A url header
for name in none serve_tcp serve_unix ceiling_tcp ceiling_unix basic; do
  url[$name]="http://127.0.0.1:${port[$name]}/page.html"
  header[$name]="Authorization: $bearer"
done
header[basic]="Authorization: $basic"
check="http://127.0.0.1:$serve_port"
url[plain]="$check/check?scope=deploy";       header[plain]="Authorization: $bearer"
url[routes]="$check/check";                   header[routes]="Authorization: $bearer"
url[basic_check]="$check/check?scope=deploy"; header[basic_check]="Authorization: $basic"
url[envoy]="$check/ext_authz/api/items";      header[envoy]="Authorization: $bearer"
extra_routes="X-Forwarded-Method: GET"
for name in "${!url[@]}"; do
  args=(-s -o /dev/null -w '%{http_code}' -H "${header[$name]}")
  [ "$name" = routes ] && args+=(-H "$extra_routes" -H "X-Forwarded-Uri: /api/items")
  code=$(curl "${args[@]}" "${url[$name]}")
  case "$code" in 200|204) ;; *) echo "bench/proxy.sh: $name answered $code" >&2; exit 1 ;; esac
done

# wrk_rps NAME: requests/s of one run (and any non-2xx answer is an error).
wrk_rps() {
  local name="$1" args=(-t2 -c32 -d"${seconds}s" -H "${header[$1]}")
  [ "$name" = routes ] && args+=(-H "$extra_routes" -H "X-Forwarded-Uri: /api/items")
  wrk "${args[@]}" "${url[$name]}" | awk -v n="$name" '
    /^Requests\/sec:/ { rps = $2 } /Non-2xx or 3xx/ { bad = $NF }
    END { if (bad > 0) { print "bench/proxy.sh: " n ": " bad " non-2xx answers" > "/dev/stderr"; exit 1 }; printf "%.0f\n", rps }'
}
median() { sort -n | awk '{ x[NR] = $1 } END { print (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2 }'; }

# measure GROUP NAME…: rounds of one run of each NAME, the order rotated each round; the
# requests/s of each run in $work/rps-NAME, one line per round.
measure() {
  local names=("$@") n=${#@} round i
  for name in "${names[@]}"; do : >"$work/rps-$name"; done
  for ((round = 0; round < rounds; round++)); do
    for ((i = 0; i < n; i++)); do
      name=${names[$(( (round + i) % n ))]}
      wrk_rps "$name" >>"$work/rps-$name"
    done
  done
}
# ratio_median A B: the median over the rounds of A's requests/s over B's, as 0.00×.
ratio_median() { paste -d' ' "$work/rps-$1" "$work/rps-$2" | awk '{ print $1 / $2 }' | median; }
rps_median() { median <"$work/rps-$1"; }
yes_no() { awk "BEGIN { print (($1) ? \"yes\" : \"**no**\") }"; }

{
  echo "Machine: $(nproc) CPU(s) $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r);" \
       "$records records (hashed); $(wrk --version 2>&1 | head -1 | awk '{ print $1, $2 }'), nginx $(nginx -v 2>&1 | sed 's|.*/||');" \
       "wrk -t2 -c32, $rounds rounds of ${seconds} s, order rotated; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
} >&2

measure none serve_tcp serve_unix ceiling_tcp ceiling_unix basic
echo "| through nginx (a 256-byte static file) | requests/s | × no auth | × the ceiling, same transport | target | met |"
echo "|---|---:|---:|---:|---|---|"
for name in none serve_tcp serve_unix ceiling_tcp ceiling_unix basic; do
  vs_none=$(ratio_median "$name" none)
  case "$name" in
    serve_tcp|serve_unix)
      ceiling=${name/serve/ceiling}
      vs_ceiling=$(ratio_median "$name" "$ceiling")
      printf '| %s | %s | %.2f× | **%.2f×** | ≥ 1.0× the ceiling | %s |\n' "$name" "$(rps_median "$name")" \
        "$vs_none" "$vs_ceiling" "$(yes_no "$vs_ceiling >= 1.0")" ;;
    *) printf '| %s | %s | %.2f× | — | — | — |\n' "$name" "$(rps_median "$name")" "$vs_none" ;;
  esac
done
echo
measure plain routes basic_check envoy
echo "| straight at serve (TCP) | requests/s | × plain /check | target | met |"
echo "|---|---:|---:|---|---|"
for name in plain routes basic_check envoy; do
  vs_plain=$(ratio_median "$name" plain)
  if [ "$name" = plain ]; then
    printf '| %s | %s | 1.00× | — | — |\n' "$name" "$(rps_median "$name")"
  else
    printf '| %s | %s | **%.2f×** | ≥ 0.90× | %s |\n' "$name" "$(rps_median "$name")" "$vs_plain" \
      "$(yes_no "$vs_plain >= 0.9")"
  fi
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
