#!/usr/bin/env bash
# Provisions a SoftHSM2 token for `hsmd serve`: DIR/softhsm2.conf (from the template next to
# this script), DIR/tokens/, a token labelled LABEL, and the user PIN in DIR/pin (mode 0600).
# PINs are random and never printed. `hsmd dev` does the same by itself for development.
#
# usage: tokens/softhsm2/provision.sh DIR [LABEL]      (LABEL defaults to "hsmd")
set -euo pipefail
dir=${1:?usage: $0 DIR [LABEL]}
label=${2:-hsmd}
here=$(cd "$(dirname "$0")" && pwd)
command -v softhsm2-util >/dev/null || {
  echo "softhsm2-util not found; install it with: apt-get install -y softhsm2" >&2
  exit 1
}
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.template" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
if softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*\b$label\b"; then
  echo "token '$label' already exists in $dir/tokens" >&2
  exit 0
fi
umask 077
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/pin"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/so-pin"
# softhsm2-util takes PINs only as arguments; they are visible to this user's `ps` while it runs.
softhsm2-util --init-token --free --label "$label" --pin "$(cat "$dir/pin")" --so-pin "$(cat "$dir/so-pin")" >/dev/null
echo "token '$label' ready: SOFTHSM2_CONF=$dir/softhsm2.conf, pin_file=$dir/pin"
