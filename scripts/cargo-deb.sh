#!/usr/bin/env bash
# Builds cargo-deb (crates.io, pinned) into .tools/bin unless it is there at that version.
# Called by `make deps` and on demand by `make deb`; prints the tool's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version=3.8.0
tool="$root/.tools/bin/cargo-deb"
if ! "$tool" --version 2>/dev/null | grep -qF "$version"; then
    echo "deps: building cargo-deb $version into .tools (about 2 minutes)" >&2
    cargo install --locked --quiet --root "$root/.tools" cargo-deb --version "$version" >&2
fi
echo "$tool"
