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
