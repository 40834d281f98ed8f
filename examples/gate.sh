#!/bin/sh
# Gate an action on a tokenfile scope check.
#
#   usage: TOKEN=... examples/gate.sh SCOPE COMMAND [ARG...]
#
# Runs COMMAND only if $TOKEN holds SCOPE in the token file ($TOKENFILE or --file default).
# The token travels in the environment (never on the command line, where `ps` shows it).
# Exit codes: COMMAND's own when it ran; otherwise 1 forbidden, 3 unknown/expired token,
# 2 usage, anything else: tokenfile could not decide (see its message).
set -u

if [ $# -lt 2 ]; then
    echo "usage: TOKEN=... $0 SCOPE COMMAND [ARG...]" >&2
    exit 2
fi
scope=$1
shift

tokenfile check --scope "$scope" --token-env TOKEN
status=$?
case $status in
    0) exec "$@" ;;
    1) echo "denied: the token lacks scope $scope" >&2 ;;
    3) echo "denied: unknown or expired token" >&2 ;;
    2) echo "usage error: bad scope $scope" >&2 ;;
    *) echo "tokenfile could not decide (exit $status); refusing" >&2 ;;
esac
exit "$status"
