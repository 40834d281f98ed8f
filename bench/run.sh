#!/usr/bin/env bash
# Benchmarks of tokenfile against baselines measured in the same run (see BENCHMARKS.md).
#
#   bench/run.sh                      # full run: 10k, 100k and 1M records, hashed and plaintext
#   bench/run.sh --quick              # 10k and 100k only, fewer runs (a minute or so)
#   bench/run.sh --dir /var/tmp/x     # where the generated files go (default: a temp dir)
#   bench/run.sh --no-serve           # without the `serve` parts (bench/serve.sh, bench/proxy.sh)
#
# Every figure is printed as a ratio against its baseline, both timed here, now, on the same
# file: `check` against `grep -qF`, a reload (TokenIndex::read_file, as serve) against `wc -l`, `mint`
# against `cp` + `sync`; then bench/serve.sh (HTTP against nginx, the Unix socket, reload
# and memory of a running `serve`) on the largest size. Nothing here asserts a time; it
# prints tables (Markdown) and says for each row whether the target of BENCHMARKS.md is met.
#
# Timing uses hyperfine (installed with apt-get when missing and we are root); without it, a
# plain loop around `date +%s%N` (median and standard deviation of N runs after two warm-ups).
#
# Environment: TOKENFILE_BIN and LOAD_INDEX_BIN time other builds of the binaries (e.g. an
# older commit, for before/after figures); GEN_TOKENS_BIN the generator; CARGO_TARGET_DIR is
# honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

sizes="10000 100000 1000000"
runs=20
dir=""
serve=1
serve_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) sizes="10000 100000"; runs=10; serve_args=(--quick) ;;
    --no-serve) serve=0 ;;
    --sizes) sizes="$2"; shift ;;
    --runs) runs="$2"; shift ;;
    --dir) dir="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "${TOKENFILE_BIN:-}" ] || [ -z "${LOAD_INDEX_BIN:-}" ] || [ -z "${GEN_TOKENS_BIN:-}" ]; then
  echo "# building release binaries" >&2
  cargo build --release --locked --quiet --bin tokenfile --example gen_tokens --example load_index
fi
bin="$(realpath "${TOKENFILE_BIN:-$target_dir/release/tokenfile}")"
load="$(realpath "${LOAD_INDEX_BIN:-$target_dir/release/examples/load_index}")"
gen="$(realpath "${GEN_TOKENS_BIN:-$target_dir/release/examples/gen_tokens}")"

. bench/lib.sh
install_if_missing hyperfine
have_hyperfine=0
command -v hyperfine >/dev/null 2>&1 && have_hyperfine=1

if [ -z "$dir" ]; then
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tokenfile-bench.XXXXXX")"
  trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir"
dir="$(realpath "$dir")"
results="$dir/results.md"
: >"$results"

# measure NAME PREPARE COMMAND [shell]: median and standard deviation in ms of COMMAND, with
# PREPARE (untimed) before each run. Prints "median stddev" (the median: this is meant to
# run on shared machines too, where a mean follows the neighbours' bursts). A single command
# runs without a shell; with "shell", COMMAND and PREPARE run by sh -c (hyperfine subtracts
# the shell's own start), which compound commands (`cp … && sync …`) need — and then both
# sides of a ratio use it.
measure() {
  local name="$1" prepare="$2" command="$3" shell="${4:-}" csv="$dir/$1.csv"
  if [ "$have_hyperfine" -eq 1 ]; then
    local args=(--style none --warmup 3 --runs "$runs" --export-csv "$csv")
    [ "$shell" = shell ] || args+=(--shell=none)
    [ -n "$prepare" ] && args+=(--prepare "$prepare")
    hyperfine "${args[@]}" "$command" >/dev/null 2>"$dir/$name.err" ||
      { cat "$dir/$name.err" >&2; echo "bench: $command failed" >&2; exit 1; }
    # command,mean,stddev,median,user,system,min,max (seconds)
    awk -F, 'NR==2 { printf "%.2f %.2f\n", $4*1000, $3*1000 }' "$csv"
  else
    local i t0 t1 samples=()
    for ((i = 0; i < runs + 2; i++)); do
      [ -n "$prepare" ] && sh -c "$prepare"
      t0=$(date +%s%N)
      sh -c "$command" >/dev/null || { echo "bench: $command failed" >&2; exit 1; }
      t1=$(date +%s%N)
      # the first two runs warm the page cache and are not counted
      [ "$i" -ge 2 ] && samples+=($(( (t1 - t0) / 1000 )))
    done
    printf '%s\n' "${samples[@]}" | sort -n |
      awk '{ x[NR] = $1; s += $1; q += $1 * $1 } END { n = NR; m = s / n; v = q / n - m * m;
             if (v < 0) v = 0; med = (n % 2) ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2;
             printf "%.2f %.2f\n", med / 1000, sqrt(v) / 1000 }'
  fi
}

# row WHAT RECORDS FORM TARGET-RATIO TARGET-ABS-MS  MEDIAN SD  BASELINE-NAME BMEDIAN BSD
row() {
  local what="$1" records="$2" form="$3" max_ratio="$4" max_ms="$5"
  local median="$6" sd="$7" bname="$8" bmedian="$9" bsd="${10}"
  local ratio met
  ratio=$(awk -v a="$median" -v b="$bmedian" 'BEGIN { printf "%.2f", a / b }')
  met=$(awk -v r="$ratio" -v m="$median" -v tr="$max_ratio" -v tm="$max_ms" 'BEGIN {
          ok = 1; if (tr != "-" && r > tr + 0) ok = 0; if (tm != "-" && m > tm + 0) ok = 0;
          print (ok ? "yes" : "**no**") }')
  local target="≤ ${max_ratio}×"
  [ "$max_ratio" = "-" ] && target="≤ ${max_ms} ms"
  [ "$max_ratio" = "-" ] && [ "$max_ms" = "-" ] && { target="—"; met="—"; }
  printf '| %s | %s | %s | %s ± %s | %s | %s ± %s | **%s×** | %s | %s |\n' \
    "$what" "$records" "$form" "$median" "$sd" "$bname" "$bmedian" "$bsd" "$ratio" "$target" "$met" |
    tee -a "$results"
}

# The last record whose scopes are `*` (the generator cycles through 7 scope sets and `*`
# is the fifth): close to the end of the file, the worst place for a scan, and granted.
probe_index() { local n=$1; echo $(( n - 1 - ((n - 1 - 4) % 7) )); }

echo "# files in $dir" >&2
for n in $sizes; do
  for form in hashed plaintext; do
    f="$dir/$form-$n.tokens"
    if [ ! -s "$f" ]; then
      if [ "$form" = plaintext ]; then "$gen" --records "$n" --plaintext >"$f"; else "$gen" --records "$n" >"$f"; fi
      chmod 600 "$f"
    fi
  done
done

{
  echo "Machine: $(nproc) CPU(s) $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r);" \
       "files on $(df -T "$dir" | awk 'NR==2 { print $2 }');" \
       "timer: $([ "$have_hyperfine" -eq 1 ] && hyperfine --version || echo 'date +%s%N loop'), $runs runs."
  echo
  echo "| measurement | records | stored | tokenfile (ms, median ± σ) | baseline | baseline (ms) | ratio of medians | target | met |"
  echo "|---|---:|---|---:|---|---:|---:|---|---|"
} | tee -a "$results"

# 1. One-shot check vs grep -qF on the same file, same record.
for n in $sizes; do
  i=$(probe_index "$n")
  export TF_BENCH_TOKEN
  TF_BENCH_TOKEN=$("$gen" --token "$i")
  for form in hashed plaintext; do
    f="$dir/$form-$n.tokens"
    if [ "$form" = plaintext ]; then cred=$("$gen" --credential "$i" --plaintext); else cred=$("$gen" --credential "$i"); fi
    read -r m s < <(measure "check-$form-$n" "" "'$bin' --file '$f' check --scope deploy --token-env TF_BENCH_TOKEN")
    read -r bm bs < <(measure "grep-$form-$n" "" "grep -qF '$cred' '$f'")
    row "check" "$n" "$form" 2 - "$m" "$s" "grep -qF" "$bm" "$bs"
  done
done

# 2. Reload: read and index the file as serve does on a change (TokenIndex::read_file: in
#    chunks, two halves by two threads past 4 MiB), and in chunks by one thread
#    (TokenIndex::read_from), vs wc -l. Each is a whole process run: start, read, index, exit.
#    (Builds before the line module read the file whole and indexed the bytes, two halves by
#    two threads: LOAD_INDEX_BIN of such a build times that.)
stream=0
"$load" /dev/null --stream --quiet 2>/dev/null && stream=1
for n in $sizes; do
  for form in hashed plaintext; do
    f="$dir/$form-$n.tokens"
    limit=-
    [ "$n" -ge 1000000 ] && limit=500
    read -r bm bs < <(measure "wc-$form-$n" "" "wc -l '$f'")
    read -r m s < <(measure "load-$form-$n" "" "'$load' '$f' --quiet")
    row "reload (load)" "$n" "$form" - "${limit}" "$m" "$s" "wc -l" "$bm" "$bs"
    if [ "$stream" -eq 1 ]; then
      read -r m s < <(measure "stream-$form-$n" "" "'$load' '$f' --stream --quiet")
      row "reload (read_from)" "$n" "$form" - "${limit}" "$m" "$s" "wc -l" "$bm" "$bs"
    fi
  done
done

# 3. mint on a 100k-record file vs cp + sync of that file. Each run starts from a fresh, synced
#    copy of the same file, so every run mints into 100k records.
n=100000
case " $sizes " in *" $n "*) ;; *) n=$(echo "$sizes" | awk '{ print $NF }') ;; esac
for form in hashed plaintext; do
  f="$dir/$form-$n.tokens"
  w="$dir/mint-$form.tokens"
  c="$dir/copy-$form.tokens"
  flag=""
  [ "$form" = plaintext ] && flag="--plaintext"
  read -r m s < <(measure "mint-$form" "cp '$f' '$w' && sync '$w'" \
    "'$bin' --file '$w' mint --scope deploy --name bench $flag >'$dir/minted.token'" shell)
  read -r bm bs < <(measure "cp-$form" "rm -f '$c' && sync" "cp '$f' '$c' && sync '$c'" shell)
  row "mint" "$n" "$form" 3 - "$m" "$s" "cp + sync" "$bm" "$bs"
done

echo >&2
echo "# table also in $results" >&2

# 4. serve, on the largest file: its own table (bench/serve.sh); then forward auth end to end
# behind nginx (bench/proxy.sh).
if [ "$serve" -eq 1 ]; then
  echo >&2
  TOKENFILE_BIN="$bin" GEN_TOKENS_BIN="$gen" bench/serve.sh "${serve_args[@]}" \
    --dir "$dir" --records "$(echo "$sizes" | awk '{ print $NF }')"
  echo >&2
  TOKENFILE_BIN="$bin" GEN_TOKENS_BIN="$gen" bench/proxy.sh "${serve_args[@]}"
fi
