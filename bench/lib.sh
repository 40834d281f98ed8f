# Shared by bench/run.sh and bench/serve.sh (sourced, not run).

# install_if_missing TOOL[:PACKAGE]...: installs the Debian package of each missing tool when
# we are root and have apt-get (the package is named after the tool unless PACKAGE says);
# otherwise leaves it missing for the caller to decide. An out-of-date package list is
# refreshed once.
install_if_missing() {
  local spec tool package
  for spec in "$@"; do
    tool="${spec%%:*}"
    package="${spec#*:}"
    command -v "$tool" >/dev/null 2>&1 && continue
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null || continue
    echo "# installing $package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1; } || true
  done
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  local port
  while :; do
    port=$(( 20000 + RANDOM % 30000 ))
    ss -Htln "sport = :$port" 2>/dev/null | grep -q . || { echo "$port"; return; }
  done
}

# wait_for WHAT COMMAND…: polls COMMAND (every 50 ms, up to 120 s); exits if it never succeeds.
wait_for() {
  local what="$1" i
  shift
  for ((i = 0; i < 2400; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$0: $what did not come up" >&2
  exit 1
}

# nginx_prelude DIR: the top of an nginx.conf that runs from DIR in the foreground with 2
# workers, up to the opening of its http block (logs and temp files in DIR; as root, the
# workers stay root so that they may reach the benchmark's 0660 sockets).
nginx_prelude() {
  local dir="$1"
  [ "$(id -u)" -ne 0 ] || echo "user root;"
  cat <<EOF
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
EOF
}

# with_work_dir NAME: a temp dir in $work, and $pids for the processes started; at exit (or on
# INT/TERM) every one of them is stopped and the dir removed, whatever happened.
with_work_dir() {
  pids=()
  work="$(mktemp -d "${TMPDIR:-/tmp}/tokenfile-$1.XXXXXX")"
  trap stop_and_clean EXIT
  trap 'exit 130' INT TERM
}
stop_and_clean() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
