#!/usr/bin/env bash
# Benchmarks of `tokenfile serve` against baselines measured in the same run (see BENCHMARKS.md).
#
#   bench/serve.sh                    # 1M records, 5 s per throughput run
#   bench/serve.sh --quick            # 100k records, 2 s runs
#   bench/serve.sh --records N --seconds S --dir DIR
#
# One `serve` (Unix socket + HTTP on 127.0.0.1, a port of its own choosing) holds a hashed
# file of N records from examples/gen_tokens.rs, and is measured against:
#   - HTTP /check (valid token, required scope): wrk against nginx `return 204;` on the same
#     machine, same wrk settings (2 threads, 32 connections), in rounds of one run each (the
#     ratio is the median of the rounds' ratios); nginx runs 2 worker processes,
#     as serve runs 2 runtime worker threads. Target: serve ≥ 0.8× nginx's requests/s.
#   - the Unix socket: examples/socket_load.rs against its own `fixed-server` (a line in, a
#     fixed line out, no check): pipelined checks/s (target ≥ 200k/s) and unpipelined p99
#     latency (target < 100 µs);
#   - reload: SIGHUP, and a new version of the file renamed over it, until the new state is
#     installed (serve's own `tokenfile_last_reload_timestamp_seconds` minus the moment of
#     the signal or rename), against `wc -l` of the file; target ≤ 500 ms for 1M records;
#   - memory: VmRSS and VmHWM of serve after the first load and after the reloads, against
#     the file's size; target ≤ 2 × size + 16 MiB.
# Nothing here asserts a time; it prints a Markdown table. Every server it starts listens on
# 127.0.0.1 or a socket in its temp dir, and is stopped on exit.
#
# Environment: TOKENFILE_BIN, GEN_TOKENS_BIN and SOCKET_LOAD_BIN use other builds (e.g. an
# older commit, for before/after figures); CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

records=1000000
seconds=5
reloads=5
http_rounds=5
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) records=100000; seconds=2; reloads=3; http_rounds=3 ;;
    --records) records="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --dir) dir="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "bench/serve.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "${TOKENFILE_BIN:-}" ] || [ -z "${GEN_TOKENS_BIN:-}" ] || [ -z "${SOCKET_LOAD_BIN:-}" ]; then
  echo "# building release binaries" >&2
  cargo build --release --locked --quiet --bin tokenfile --example gen_tokens --example socket_load
fi
bin="$(realpath "${TOKENFILE_BIN:-$target_dir/release/tokenfile}")"
gen="$(realpath "${GEN_TOKENS_BIN:-$target_dir/release/examples/gen_tokens}")"
load="$(realpath "${SOCKET_LOAD_BIN:-$target_dir/release/examples/socket_load}")"

. bench/lib.sh
install_if_missing wrk nginx curl
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/serve.sh: needs $tool" >&2; exit 1; }
done

# Everything started here is stopped at exit, whatever happens (bench/lib.sh).
with_work_dir serve-bench
[ -n "$dir" ] || dir="$work"
mkdir -p "$dir"
dir="$(realpath "$dir")"

# The generated file is kept in --dir (bench/run.sh shares it); serve reads a copy of it,
# because the reload part renames new versions over its file. The copy has a directory of
# its own: serve watches the file's directory, and re-reads the file (a whole reload, even
# if it is unchanged) after any file is created there — such as nginx's or the sockets.
data="$dir/hashed-$records.tokens"
if [ ! -s "$data" ]; then
  "$gen" --records "$records" >"$data"
  chmod 600 "$data"
fi
mkdir "$work/watched"
file="$work/watched/tokens"
cp "$data" "$file"
chmod 600 "$file"
size=$(stat -c %s "$file")

# A granted check: the last record whose scopes are `*` (see bench/run.sh).
probe=$(( records - 1 - ((records - 1 - 4) % 7) ))
token=$("$gen" --token "$probe")

sock="$work/serve.sock"
RUST_LOG=info "$bin" --file "$file" serve --socket "$sock" --http 127.0.0.1:0 2>"$work/serve.log" &
serve_pid=$!
pids+=("$serve_pid")
wait_for "serve" grep -q "serving checks" "$work/serve.log"
http_port=$(sed -n 's/.*listening http=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/serve.log" | head -1)
metrics() { curl -sf "http://127.0.0.1:$http_port/metrics"; }
metric() { metrics | awk -v m="$1" '$1 == m { print $2 }'; }
status_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$serve_pid/status"; }

fixed_sock="$work/fixed.sock"
"$load" fixed-server "$fixed_sock" &
pids+=("$!")
wait_for "the fixed socket server" test -S "$fixed_sock"

nginx_port=$(free_port)
mkdir -p "$work/nginx"
{
  nginx_prelude "$work/nginx"
  cat <<EOF
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 204; }
  }
}
EOF
} >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=("$!")
wait_for "nginx" curl -sf "http://127.0.0.1:$nginx_port/"

results="$dir/serve-results.md"
: >"$results"
out() { tee -a "$results"; }
# row WHAT SERVE BASELINE-NAME BASELINE RATIO TARGET MET
row() { printf '| %s | %s | %s | %s | **%s** | %s | %s |\n' "$@" | out; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
yes_no() { awk "BEGIN { print (($1) ? \"yes\" : \"**no**\") }"; }
median() { sort -n | awk '{ x[NR] = $1 } END { print (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2 }'; }

{
  echo "Machine: $(nproc) CPU(s) $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r);" \
       "$records records (hashed), file $(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }');" \
       "$(wrk --version 2>&1 | head -1 | awk '{ print $1, $2 }'), nginx $(nginx -v 2>&1 | sed 's|.*/||');" \
       "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| measurement | serve | baseline | baseline value | ratio | target | met |"
  echo "|---|---:|---|---:|---:|---|---|"
} | out

# --- memory after the first load
rss0=$(status_kib VmRSS)
hwm0=$(status_kib VmHWM)
mem_limit=$(( size / 1024 * 2 + 16384 ))
mib() { awk -v k="$1" 'BEGIN { printf "%.0f MiB", k / 1024 }'; }
mem_row() {
  row "$1" "$(mib "$2")" "file size" "$(mib $((size / 1024)))" "$(ratio "$2" $((size / 1024)))" \
    "≤ 2 × size + 16 MiB ($(mib "$mem_limit"))" "$(yes_no "$2 <= $mem_limit")"
}
mem_row "RSS after the first load (VmRSS)" "$rss0"
mem_row "peak RSS during the first load (VmHWM)" "$hwm0"

# --- HTTP: wrk against nginx, then serve, same settings
# wrk_run URL [HEADER]: prints "requests/s p50_us p99_us non2xx"
wrk_run() {
  local url="$1" args=(-t2 -c32 -d"${seconds}s" --latency)
  [ -n "${2:-}" ] && args+=(-H "$2")
  wrk "${args[@]}" "$url" | awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6; return v }
    $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) }
    /^Requests\/sec:/ { rps = $2 } /Non-2xx or 3xx/ { bad = $NF }
    END { printf "%.0f %.0f %.0f %d\n", rps, p50, p99, bad }'
}
check_url="http://127.0.0.1:$http_port/check?scope=deploy"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$check_url")
[ "$code" = 204 ] || { echo "bench/serve.sh: serve answered $code to the benchmark check" >&2; exit 1; }
# Rounds of one nginx run and one serve run, back to back, in alternating order: the load on
# a shared machine drifts within seconds, so each round gives a ratio of its own, and the
# figure is the median of the rounds' ratios (and of each side's values).
nginx_wrk() { wrk_run "http://127.0.0.1:$nginx_port/check"; }
serve_wrk() { wrk_run "$check_url" "Authorization: Bearer $token"; }
: >"$work/wrk-nginx" >"$work/wrk-serve" >"$work/wrk-ratio"
for ((round = 0; round < http_rounds; round++)); do
  if ((round % 2 == 0)); then
    nginx_wrk >>"$work/wrk-nginx"; serve_wrk >>"$work/wrk-serve"
  else
    serve_wrk >>"$work/wrk-serve"; nginx_wrk >>"$work/wrk-nginx"
  fi
  paste -d' ' "$work/wrk-serve" "$work/wrk-nginx" | tail -1 | awk '{ print $1 / $5 }' >>"$work/wrk-ratio"
done
column_median() { awk -v c="$1" '{ print $c }' "$2" | median; }
n_rps=$(column_median 1 "$work/wrk-nginx") n_p50=$(column_median 2 "$work/wrk-nginx") n_p99=$(column_median 3 "$work/wrk-nginx")
s_rps=$(column_median 1 "$work/wrk-serve") s_p50=$(column_median 2 "$work/wrk-serve") s_p99=$(column_median 3 "$work/wrk-serve")
http_ratio=$(median <"$work/wrk-ratio")
awk '{ bad += $4 } END { exit bad > 0 }' "$work/wrk-nginx" "$work/wrk-serve" ||
  echo "bench/serve.sh: non-2xx answers in the HTTP runs" >&2
echo "# wrk requests/s per round: nginx $(cut -d' ' -f1 "$work/wrk-nginx" | xargs), serve $(cut -d' ' -f1 "$work/wrk-serve" | xargs)" >&2
row "HTTP /check requests/s (wrk -t2 -c32; medians of $http_rounds rounds)" "$s_rps" "nginx return 204" "$n_rps" \
  "$(printf '%.2f×' "$http_ratio")" "≥ 0.8×" "$(yes_no "$http_ratio >= 0.8")"
row "HTTP /check p50 latency (µs)" "$s_p50" "nginx return 204" "$n_p50" "$(ratio "$s_p50" "$n_p50")" "—" "—"
row "HTTP /check p99 latency (µs)" "$s_p99" "nginx return 204" "$n_p99" "$(ratio "$s_p99" "$n_p99")" "—" "—"

# --- Unix socket: socket_load against its fixed-line server, then serve
export TF_REQUEST="CHECK deploy $token"
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
b_pipe=$("$load" pipelined "$fixed_sock" --seconds "$seconds")
s_pipe=$("$load" pipelined "$sock" --seconds "$seconds")
b_unpipe=$("$load" unpipelined "$fixed_sock")
s_unpipe=$("$load" unpipelined "$sock")
b_cps=$(field checks_per_s <<<"$b_pipe")
s_cps=$(field checks_per_s <<<"$s_pipe")
row "socket checks/s, pipelined (2 connections)" "$s_cps" "fixed-line server" "$b_cps" \
  "$(ratio "$s_cps" "$b_cps")" "≥ 200000/s" "$(yes_no "$s_cps >= 200000")"
for q in p50 p99 p999; do
  b=$(field "${q}_us" <<<"$b_unpipe")
  s=$(field "${q}_us" <<<"$s_unpipe")
  target="—" met="—"
  [ "$q" = p99 ] && { target="< 100 µs"; met=$(yes_no "$s < 100"); }
  row "socket latency $q (µs), unpipelined" "$s" "fixed-line server" "$b" "$(ratio "$s" "$b")" "$target" "$met"
done

# --- reload, as serve does it
wc_ms=$(for _ in $(seq "$reloads"); do
  t0=$(date +%s%N); wc -l "$file" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 ))
done | median | awk '{ printf "%.1f", $1 / 1000 }')
# reload_once ACTION: runs ACTION, waits for the next installed state, prints its delay (ms).
reload_once() {
  local before t0 installed
  before=$(metric tokenfile_reloads_total)
  t0=$(date +%s.%N)
  "$@"
  wait_for "a reload" reloaded
  installed=$(metric tokenfile_last_reload_timestamp_seconds)
  awk -v a="$installed" -v b="$t0" 'BEGIN { printf "%.1f\n", (a - b) * 1000 }'
}
hup() { kill -HUP "$serve_pid"; }
reloaded() { [ "$(metric tokenfile_reloads_total)" != "$before" ]; }
hup_ms=$(for _ in $(seq "$reloads"); do reload_once hup; sleep 0.5; done | median)
row "reload on SIGHUP (ms, median of $reloads)" "$hup_ms" "wc -l" "$wc_ms" "$(ratio "$hup_ms" "$wc_ms")" \
  "≤ 500 ms" "$(yes_no "$hup_ms <= 500")"
# Each new version adds a record (a state that only adds is installed at once; one that
# takes away waits for confirmation, see src/serve/watch.rs) and is renamed over the file.
# They are written outside serve's directory (see above) and renamed into it.
mkdir -p "$work/staging"
replace() { mv "$work/staging/next" "$file"; }
new_ms=$(for i in $(seq "$reloads"); do
  printf 'sha256:%064x\tread\tbench-extra-%d\n' "$i" "$i" >>"$work/staging/new-lines"
  cat "$data" "$work/staging/new-lines" >"$work/staging/next"
  reload_once replace
  sleep 0.5
done | median)
row "reload on a renamed new file (ms, median of $reloads)" "$new_ms" "wc -l" "$wc_ms" \
  "$(ratio "$new_ms" "$wc_ms")" "≤ 500 ms" "$(yes_no "$new_ms <= 500")"

# --- memory after the reloads
mem_row "RSS after $(( reloads * 2 )) reloads (VmRSS)" "$(status_kib VmRSS)"
mem_row "peak RSS over the reloads (VmHWM)" "$(status_kib VmHWM)"

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | out
[ "$dir" = "$work" ] || echo "# table also in $results" >&2
