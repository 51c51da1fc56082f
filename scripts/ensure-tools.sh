#!/usr/bin/env bash
# Installs what `make test` needs beyond the Rust toolchain, or says exactly how.
# Debian packages are installed when running as root; otherwise the command to run
# is printed and the script fails.
set -euo pipefail

need_debs=()
[ -x /usr/sbin/postfix ] && [ -x /usr/sbin/postmap ] || need_debs+=(postfix)

if [ ${#need_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${need_debs[*]}"
    # Postfix asks how it should deliver; the tests run it from private config folders only.
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    echo "postfix postfix/mailname string mailfleet.test" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}" >/dev/null
  else
    echo "missing: ${need_debs[*]}. Install with:" >&2
    echo "  sudo apt-get install -y ${need_debs[*]}" >&2
    exit 1
  fi
fi

for tool in rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "missing $tool; install with: rustup component add ${tool#cargo-}" >&2; exit 1; }
done
