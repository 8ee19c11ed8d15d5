#!/usr/bin/env sh
# The container's build step (deploy/Dockerfile runs it; so does deploy/check, outside a
# container): builds the relay in release mode and lays out the runtime image's files under
# OUT (default /out): the binary, and the script that creates the relay's user.
set -eu
out="${1:-/out}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p wharf-relay --bin wharf-relay
install -D -m 0755 "$target/release/wharf-relay" "$out/usr/local/bin/wharf-relay"
install -D -m 0755 deploy/container/create-user.sh "$out/usr/local/share/wharf/create-user.sh"
