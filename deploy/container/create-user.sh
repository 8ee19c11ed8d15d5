#!/usr/bin/env sh
# The runtime image's user: wharf, uid/gid 10001, owning /data. Idempotent.
set -eu
data="${1:-/data}"
getent group wharf >/dev/null || groupadd --system --gid 10001 wharf
getent passwd wharf >/dev/null ||
  useradd --system --uid 10001 --gid 10001 --home-dir "$data" --no-create-home \
    --shell /usr/sbin/nologin wharf
install -d -m 0700 -o 10001 -g 10001 "$data"
