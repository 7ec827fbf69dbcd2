#!/usr/bin/env bash
# make deb: the Debian package, target/debian/attitude_<version>_<arch>.deb.
#   1. the release binary (cargo build --release --locked);
#   2. its man pages and shell completions (`attitude generate`), into target/release/generated;
#   3. cargo-deb (.tools/bin, scripts/cargo-deb.sh) packs them with the conffile, the unit and
#      the maintainer scripts of deploy/debian (crates/attitude/Cargo.toml, [package.metadata.deb]);
#   4. lintian: an error fails the build (the warnings it may print: docs/install.md).
set -euo pipefail
cd "$(dirname "$0")/.."
tool="$(bash scripts/cargo-deb.sh)"
cargo build --release --locked -p attitude
generated=target/release/generated
rm -rf "$generated"
target/release/attitude generate --out "$generated" >/dev/null
gzip -9n "$generated"/man/*.8
rm -f target/debian/attitude_*.deb
"$tool" --no-build --locked --strip -p attitude
deb=$(ls target/debian/attitude_*.deb)
if command -v lintian >/dev/null 2>&1; then
    lintian --fail-on error "$deb"
else
    echo "deb: lintian is not installed (make deps installs it); package not checked" >&2
fi
echo "deb: $deb"
