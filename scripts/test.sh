#!/usr/bin/env bash
# The test command of vipgate: `sudo ./scripts/test.sh`, or `./scripts/test.sh` as root.
#
# Needs only the Rust toolchain (rustup's cargo with clippy and rustfmt) on PATH; installs the
# Debian packages it lacks (as root) and the cargo tools it lacks (scripts/fuzz.sh). Stops at
# the first failing step: format, clippy, unit and pipeline tests, short fuzz runs, then the
# root-only system tests in network namespaces (skipped, loudly, where they can't run).
#
# Environment: FUZZ_SECONDS (per fuzz target, default 5) and the others of scripts/fuzz.sh.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: ./scripts/test.sh [-h|--help]

Runs every test of vipgate, as root (or with sudo), stopping at the first failure:
installs the Debian packages it lacks, then cargo fmt --check, cargo clippy -D warnings,
cargo test --workspace (the system tests too when root and network namespaces are
available), and short fuzz runs (scripts/fuzz.sh).

Environment: FUZZ_SECONDS (seconds per fuzz target, default 5) and those of scripts/fuzz.sh.
USAGE
}

case ${1:-} in
"") ;;
-h | --help)
    usage
    exit 0
    ;;
*)
    usage >&2
    exit 2
    ;;
esac

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

# What the steps below need beyond the toolchain: a C/C++ compiler and libc headers (the linker,
# crates that build C, libFuzzer's C++ sources in libfuzzer-sys), CA certificates (crates.io
# over TLS), iproute2 (`ip netns` for the system tests), nftables (the kernel gateway the
# system-test harness checks itself against), prometheus (the system tests scrape vipgate's
# metrics with the real Prometheus server, so the format is checked by its consumer, not by
# our own parser), keepalived (a VRRP peer: vipgate must elect with it, both ways round).
readonly DEBIAN_PACKAGES=(ca-certificates gcc g++ libc6-dev iproute2 nftables prometheus keepalived)

banner() {
    printf '\n==== %s ====\n' "$*"
}

loud() {
    printf '\n'
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    printf '!!! %s\n' "$@"
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
}

is_root() {
    [[ $(id -u) -eq 0 ]]
}

missing_debian_packages() {
    local pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done
}

install_debian_packages() {
    local missing
    mapfile -t missing < <(missing_debian_packages)
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "Debian packages present: ${DEBIAN_PACKAGES[*]}"
        return 0
    fi
    if ! is_root; then
        loud "NOT ROOT: cannot install the missing Debian packages: ${missing[*]}" \
            "Later steps may fail for want of them. Run: sudo ./scripts/test.sh"
        return 0
    fi
    echo "Installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
}

require_toolchain() {
    # A root shell that isn't a login shell may lack ~/.cargo/bin on PATH.
    if ! command -v cargo >/dev/null && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
        # shellcheck source=/dev/null
        . "${CARGO_HOME:-$HOME/.cargo}/env"
    fi
    if ! command -v cargo >/dev/null; then
        echo "test.sh: cargo is not on PATH. Install Rust with rustup; under sudo keep your" >&2
        echo "toolchain with: sudo -E env \"PATH=\$PATH\" ./scripts/test.sh" >&2
        exit 1
    fi
    cargo --version
    cargo fmt --version
    cargo clippy --version
}

# The system tests need root and working network namespaces (a container may forbid them).
# Prints why not when they can't run. The probe namespace is unique and removed at once.
netns_usable() {
    if ! is_root; then
        echo "not running as root"
        return 1
    fi
    if ! command -v ip >/dev/null; then
        echo "'ip' (iproute2) is not installed"
        return 1
    fi
    local probe="vipgate-probe-$$-$RANDOM"
    local err
    if ! err=$(ip netns add "$probe" 2>&1); then
        echo "'ip netns add' failed: $err"
        return 1
    fi
    if ! err=$(ip netns delete "$probe" 2>&1); then
        echo "'ip netns delete $probe' failed: $err"
        return 1
    fi
    return 0
}

# The root-only system tests (crates/vipgate-io/tests/xdp_veth.rs, crates/vipgate-netns/tests/
# root.rs, crates/vipgate/tests/system.rs) are ordinary tests: `cargo test --workspace` runs
# them when it runs as root, and each skips with a loud SKIP line otherwise. This step repeats
# the verdict at the end of the log, where a skipped run cannot go unnoticed.
report_system_tests() {
    local why
    if ! why=$(netns_usable); then
        loud "SKIP: root-only system tests NOT RUN: $why" \
            "Run as root on a machine where 'ip netns add' works to run them."
        return 0
    fi
    echo "Root and network namespaces available: the system tests ran in 'cargo test --workspace'."
}

start=$SECONDS

banner "Environment"
install_debian_packages
require_toolchain

banner "cargo fmt --all -- --check"
cargo fmt --all -- --check
# fuzz/ is its own workspace, outside `--all`.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

banner "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

banner "cargo test --workspace"
cargo test --workspace

banner "scripts/fuzz.sh (FUZZ_SECONDS=${FUZZ_SECONDS:-5} per target)"
./scripts/fuzz.sh

banner "System tests (root, network namespaces)"
report_system_tests

banner "All steps passed in $((SECONDS - start))s"
