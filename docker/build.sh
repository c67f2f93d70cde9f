#!/usr/bin/env bash
# Builds the static cloister-node binary and the `cloister-node:local` image
# around it, offline: the image starts FROM scratch, nothing is pulled.
#
#   docker/build.sh                          # release build (the default)
#   CLOISTER_PROFILE=debug docker/build.sh   # faster to build, used by the tests
#   CLOISTER_IMAGE=name:tag docker/build.sh  # another image tag
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
profile=${CLOISTER_PROFILE:-release}
image=${CLOISTER_IMAGE:-cloister-node:local}
case "$profile" in
  release) profile_flag=(--release); profile_dir=release ;;
  debug | dev) profile_flag=(); profile_dir=debug ;;
  *) profile_flag=(--profile "$profile"); profile_dir=$profile ;;
esac
# A static-pie binary: a scratch image has no libc to link against. The flag
# goes in the target's own variable, not RUSTFLAGS: it must not reach build
# scripts and proc macros, and a build that sets the same variable (CI does,
# for every build) shares its compiled dependencies with this one.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  "${CARGO:-cargo}" build "${profile_flag[@]}" --target "$target" \
  -p cloister-examples --bin cloister-node --bin kv-node
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "target/$target/$profile_dir/cloister-node" "target/$target/$profile_dir/kv-node" "$context/"
docker build --quiet -t "$image" -f docker/Dockerfile "$context" >/dev/null
echo "built image $image ($profile build)"
