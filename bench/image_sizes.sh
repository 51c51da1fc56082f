#!/usr/bin/env bash
# The sizes of the two images (Dockerfile: the operator; images/sender/Dockerfile:
# the sender), computed from what each Dockerfile puts in, since no container
# runtime runs here to build and measure them:
# - the shipped binary: `cargo build --profile dist` (no debug info, stripped),
#   measured as is and gzip-compressed (how a registry layer carries it);
# - the sender's Debian packages: what `apt-get install --no-install-recommends`
#   of the Dockerfile's package list would add to debian:bookworm-slim, found by
#   simulating that install (`apt-get install --simulate`) against a package
#   database holding the slim image's packages, summed from each package's
#   Installed-Size (unpacked) and Size (the .deb apt downloads);
# - the bases themselves, from their packages' Installed-Size: bookworm-slim is
#   Debian's required packages plus apt and usr-is-merged (what apt resolves
#   them to); the
#   distroless cc image is the package list below. Both images delete
#   documentation, so these base figures are upper bounds.
# Needs a Debian 12 (bookworm) machine with its package lists (`apt-get update`).
# SKIP_BUILD=1 measures an existing target/dist/mailfleet.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --profile dist --locked --bin mailfleet >/dev/null
fi
bin="$target/dist/mailfleet"
[ -x "$bin" ] || { echo "no $bin: run without SKIP_BUILD" >&2; exit 1; }
grep -q 'VERSION_CODENAME=bookworm' /etc/os-release ||
  { echo "the package figures need Debian 12 (bookworm) package lists" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apt_sim() { # status-file packages... -> the packages apt would install
  local status=$1; shift
  apt-get install --simulate --no-install-recommends \
    -o Dir::State::status="$status" -o Debug::NoLocking=1 "$@" 2>/dev/null |
    awk '/^Inst /{print $2}' | sort -u
}
field_sum() { # field packages... -> sum of the field over the packages
  local field=$1; shift
  [ $# -eq 0 ] && { echo 0; return; }
  apt-cache show --no-all-versions "$@" | awk -v f="$field:" '$1==f{s+=$2} END{print s+0}'
}
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }

# The slim base: required packages plus apt, as apt resolves them.
: > "$work/empty"
mapfile -t required < <(apt-cache dumpavail |
  awk '/^Package:/{p=$2} /^Priority: required/{print p}' | sort -u)
# usr-is-merged: the base images are built merged (apt would otherwise
# pick the usrmerge alternative and perl with it).
mapfile -t slim < <(apt_sim "$work/empty" "${required[@]}" apt usr-is-merged)
apt-cache show --no-all-versions "${slim[@]}" |
  awk '/^Package:/{print; print "Status: install ok installed"; next} {print}' > "$work/slim-status"

# What images/sender/Dockerfile installs on top of it.
mapfile -t sender_packages < <(sed -n '/apt-get install/,/rm -rf/p' images/sender/Dockerfile |
  tr ' \\' '\n\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' |
  grep -vE '^(apt-get|install|rm|postfix/main_mailer_type|noninteractive|update)$' | sort -u)
mapfile -t added < <(apt_sim "$work/slim-status" "${sender_packages[@]}")

# The distroless cc image's packages (gcr.io/distroless/cc-debian12).
distroless=(base-files netbase tzdata media-types ca-certificates libc6 libssl3 libgcc-s1 libgomp1 libstdc++6)

binary=$(stat -c %s "$bin")
binary_gz=$(gzip -6 -c "$bin" | wc -c)
slim_kib=$(field_sum Installed-Size "${slim[@]}")
added_kib=$(field_sum Installed-Size "${added[@]}")
added_deb=$(field_sum Size "${added[@]}")
distroless_kib=$(field_sum Installed-Size "${distroless[@]}")

echo "binary (dist profile, stripped):      $(mib "$binary") MiB; gzip -6: $(mib "$binary_gz") MiB"
echo "sender packages asked for:            ${sender_packages[*]}"
echo "packages apt adds to bookworm-slim:   ${#added[@]}: ${added[*]}"
echo "  unpacked (Installed-Size):          $(mib $((added_kib * 1024))) MiB; .deb downloads: $(mib "$added_deb") MiB"
echo "bookworm-slim base (upper bound):     $(mib $((slim_kib * 1024))) MiB unpacked, ${#slim[@]} packages"
echo "distroless cc base (upper bound):     $(mib $((distroless_kib * 1024))) MiB unpacked"
echo "operator image (distroless + binary): $(mib $((distroless_kib * 1024 + binary))) MiB unpacked"
echo "sender image (slim + packages + bin): $(mib $((slim_kib * 1024 + added_kib * 1024 + binary))) MiB unpacked"
echo "per sender pod pull on a node with the base: packages $(mib "$added_deb") MiB (.deb) + binary $(mib "$binary_gz") MiB (gzip)"
