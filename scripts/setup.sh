#!/usr/bin/env bash
# Installs what building and testing UES needs on a fresh Debian machine with a Rust toolchain:
# system packages (libclang for RocksDB's bindings, a C++ compiler) and the npm/PyPI packages the
# interoperability tests use. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
# libclang itself (bindgen loads it), not libclang-cpp, which some images carry alone.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
    && ! ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so'; then
    need_apt+=(libclang-dev)
fi
command -v g++ >/dev/null || need_apt+=(g++)
command -v python3 >/dev/null || need_apt+=(python3)
# systemd-analyze checks the systemd unit `ues init` writes.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# The HTTPS tests drive curl (HTTP/2) and make certificates with openssl.
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
# The ACME tests get certificates from Let's Encrypt's test server.
command -v pebble >/dev/null || need_apt+=(pebble)
# The OAuth pages are signed in to and screenshotted in a real headless browser.
command -v chromium >/dev/null || need_apt+=(chromium fonts-dejavu-core)
# The chat tests check the node against libolm, Matrix's C implementation of Olm and Megolm.
/usr/bin/python3 -c 'import olm' 2>/dev/null || need_apt+=(python3-olm)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# rustfmt and clippy ship as rustup components; add them when missing (CI runs both).
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
# Node packages the interoperability tests drive (Bluesky's own @atproto/* implementations).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup: installing nodejs and npm" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
    echo "setup: npm ci in tests/js" >&2
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch tests/js/node_modules
fi
# Bluesky's reference PDS and a did:plc directory for the account migration test. Its native
# SQLite module is built from source (no prebuilt download offline), which takes a couple of
# minutes, so the installed tree is kept per lock file under the user's cache and linked here.
if [ ! -e tests/js/refpds/node_modules ]; then
    lock_hash=$(sha256sum tests/js/refpds/package-lock.json | cut -c1-16)
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/ues/refpds-$lock_hash"
    if [ ! -d "$cache/node_modules" ]; then
        echo "setup: npm ci of the reference PDS (builds better-sqlite3, ~2 min)" >&2
        rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
        cp tests/js/refpds/package.json tests/js/refpds/package-lock.json "$cache.tmp/"
        (cd "$cache.tmp" && npm_config_build_from_source=true npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        rm -rf "$cache" && mv "$cache.tmp" "$cache"
    fi
    ln -sfn "$cache/node_modules" tests/js/refpds/node_modules
fi
# The Python SDK the interoperability tests drive, in a virtualenv of its own.
if [ ! -x tests/py/.venv/bin/python ] || [ tests/py/requirements.txt -nt tests/py/.venv ]; then
    echo "setup: python venv in tests/py" >&2
    python3 -m venv tests/py/.venv || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"; $SUDO apt-get install -y -qq python3-venv >/dev/null; python3 -m venv tests/py/.venv; }
    tests/py/.venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
    touch tests/py/.venv
fi
echo "setup: ok" >&2
