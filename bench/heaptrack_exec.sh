#!/usr/bin/env bash
# Runs a command under heaptrack's allocation tracker, as the same process
# (exec), so a harness reading /proc/<pid> still sees the command itself:
#   SCALE_OPERATOR_WRAPPER=bench/heaptrack_exec.sh bench/operator_scale.sh
# The trace goes to ${HEAPTRACK_OUT:-/tmp/mailfleet-operator.heaptrack}.zst
# (read with heaptrack_print); it is complete once the command ends, even
# when it is killed.
set -euo pipefail
libexec=/usr/lib/heaptrack/libexec
preload=/usr/lib/heaptrack/libheaptrack_preload.so
out="${HEAPTRACK_OUT:-/tmp/mailfleet-operator.heaptrack}"
[ -x "$libexec/heaptrack_interpret" ] && [ -f "$preload" ] || {
    echo "heaptrack is not installed (apt-get install heaptrack)" >&2
    exit 1
}
fifo="$(mktemp -u)"
mkfifo "$fifo"
("$libexec/heaptrack_interpret" <"$fifo" | zstd -q -f -o "$out.zst"; rm -f "$fifo") &
LD_PRELOAD="$preload" DUMP_HEAPTRACK_OUTPUT="$fifo" exec "$@"
