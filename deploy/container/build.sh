#!/usr/bin/env sh
# The container's build step (deploy/Dockerfile runs it; so does deploy/check, outside a
# container): builds the relay in release mode and lays out the runtime image's files under
# OUT (default /out): the binary, and the script that creates the relay's user.
# WHARF_BUILD_PROFILE (default release) picks the Cargo profile: deploy/check passes dev, whose
# build the test command has already made.
set -eu
out="${1:-/out}"
target="${CARGO_TARGET_DIR:-target}"
profile="${WHARF_BUILD_PROFILE:-release}"
case "$profile" in
  dev) dir=debug ;;
  *) dir="$profile" ;;
esac
# --workspace: features resolved as for the tested build (and no dependency compiled twice
# when the workspace was built before).
cargo build --profile "$profile" --locked --workspace --bin wharf-relay
install -D -m 0755 "$target/$dir/wharf-relay" "$out/usr/local/bin/wharf-relay"
install -D -m 0755 deploy/container/create-user.sh "$out/usr/local/share/wharf/create-user.sh"
