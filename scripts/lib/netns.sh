# shellcheck shell=bash
# Shared functions of scripts/lab.sh and scripts/bench-e2e.sh: Debian packages, the build, and
# network namespaces that are registered as they are made so that one cleanup removes them on
# every exit path. Source it from a script that runs `set -euo pipefail`.
#
# Test network rules (shared/DESIGN.md): everything lives in namespaces made here; nothing is
# added to the root namespace; addresses come from 198.18.0.0/15, 203.0.113.0/24 and
# 198.51.100.0/24 only.

# Namespaces and processes made by this script, newest last; vg_cleanup undoes them.
VG_NAMESPACES=()
VG_PIDS=()
# The pid of the last process vg_spawn started (a global, because $(...) would run vg_spawn in
# a subshell whose registration the cleanup would never see).
VG_LAST_PID=
VG_CLEANED=0

vg_log() {
    printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

vg_die() {
    vg_log "error: $*"
    exit 1
}

vg_require_root() {
    [[ $(id -u) -eq 0 ]] || vg_die "run as root (sudo $0): namespaces, veths and XDP need it"
}

# vg_have CMD — true if the command (or, for a CMD that starts with /, the file) exists.
vg_have() {
    if [[ $1 == /* ]]; then
        [[ -e $1 ]]
    else
        command -v "$1" >/dev/null 2>&1
    fi
}

# vg_ensure_tools CMD:PACKAGE... — installs the Debian packages dpkg does not list as
# installed, and runs `apt-get update` only then: on a machine that has them all, apt is not
# touched (no network, no minute spent refreshing lists). LAB_NO_APT=1 skips apt while every
# command is there. Then checks every command is there. A CMD that starts with / is a file the
# package provides (for packages without a command, such as libc6-dev).
vg_ensure_tools() {
    local pair cmd pkg missing=() absent=()
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        vg_have "$cmd" || absent+=("$cmd")
        if ! command -v dpkg-query >/dev/null 2>&1; then
            continue
        fi
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} > 0)) && [[ ${LAB_NO_APT:-0} != 1 || ${#absent[@]} -gt 0 ]]; then
        command -v apt-get >/dev/null 2>&1 ||
            vg_die "apt-get not found and missing packages: ${missing[*]}"
        vg_log "installing missing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
            vg_die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" </dev/null >/dev/null || vg_die "apt-get install ${missing[*]} failed"
    fi
    for pair in "$@"; do
        cmd=${pair%%:*}
        vg_have "$cmd" || vg_die "$cmd is missing; install the Debian package ${pair#*:}"
    done
}

# vg_cargo ARGS... — runs cargo as the user who called sudo when there is one: their rustup
# toolchain is not on root's PATH under sudo, and a root-owned target/ would break their next
# plain `cargo build`. Falls back to root's own cargo.
vg_cargo() {
    local repo=$1
    shift
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] &&
        runuser -u "$SUDO_USER" -- test -w "$repo" 2>/dev/null; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        (cd "$repo" && runuser -u "$SUDO_USER" -- env "HOME=$home" \
            "PATH=$home/.cargo/bin:$PATH" ${CARGO_TARGET_DIR:+"CARGO_TARGET_DIR=$CARGO_TARGET_DIR"} \
            cargo "$@")
        return
    fi
    local cargo
    cargo=$(command -v cargo || true)
    [[ -n $cargo ]] || cargo=${HOME:-/root}/.cargo/bin/cargo
    [[ -x $cargo ]] || vg_die "cargo not found: install the Rust toolchain (rustup) first"
    (cd "$repo" && "$cargo" "$@")
}

# Where cargo puts release binaries for this repository.
vg_release_dir() {
    printf '%s/release\n' "${CARGO_TARGET_DIR:-$1/target}"
}

# vg_ns_create NAME — a namespace with loopback up and IPv6 off (no router solicitations,
# DAD or MLD frames mixed into what a test counts).
vg_ns_create() {
    local ns=$1
    ip netns add "$ns"
    VG_NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
        net.ipv6.conf.default.disable_ipv6=1
}

# vg_veth NS1 IF1 NS2 IF2 [QUEUES] — a veth pair made directly inside its two namespaces (never
# passing through the root namespace), both ends up. QUEUES sets RX and TX queue counts on both
# ends: native XDP on veth wants at least as many RX queues as the peer has TX queues, and a
# worker polls one queue per interface, so the gateway's pairs get one queue per worker.
vg_veth() {
    local ns1=$1 if1=$2 ns2=$3 if2=$4 queues=${5:-}
    local q=()
    [[ -z $queues ]] || q=(numtxqueues "$queues" numrxqueues "$queues")
    ip -n "$ns1" link add "$if1" "${q[@]}" type veth peer name "$if2" netns "$ns2" "${q[@]}"
    ip -n "$ns1" link set "$if1" up
    ip -n "$ns2" link set "$if2" up
}

# vg_tx_off NS IF — a kernel endpoint's veth must send finished checksums: with TX offload on,
# frames reach XDP with partial UDP/TCP checksums (and as TSO super-frames in SKB mode).
vg_tx_off() {
    ip netns exec "$1" ethtool -K "$2" tx off >/dev/null
}

vg_addr() {
    ip -n "$1" addr add "$3" dev "$2"
}

vg_sysctl() {
    local ns=$1
    shift
    ip netns exec "$ns" sysctl -qw "$@"
}

# vg_mac NS IF — the interface's MAC as `ip link show` prints it.
vg_mac() {
    ip -n "$1" -o link show dev "$2" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p'
}

# vg_spawn NS OUT ERR CMD... — CMD in the background inside NS, stdout to OUT, stderr to ERR,
# registered for cleanup; its pid in VG_LAST_PID (`setsid` and `ip netns exec` both exec, so the
# pid is CMD's own). Its own session keeps a terminal's Ctrl-C away from it: the script decides
# when and how each process stops (vipgate prints its counters on SIGTERM).
vg_spawn() {
    local ns=$1 out=$2 err=$3
    shift 3
    setsid ip netns exec "$ns" "$@" >"$out" 2>"$err" </dev/null &
    VG_LAST_PID=$!
    VG_PIDS+=("$VG_LAST_PID")
}

vg_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    # A child that exited but is not reaped yet still answers kill -0.
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
    [[ -n $state && $state != Z ]]
}

# vg_stop PID [SECONDS] — SIGTERM, then SIGKILL after SECONDS (default 5); returns the
# process's exit status when it is a child of this shell.
vg_stop() {
    local pid=$1 seconds=${2:-5} rc=0
    kill -TERM "$pid" 2>/dev/null || true
    if ! vg_wait_until "$seconds" vg_dead "$pid"; then
        vg_log "pid $pid ignored SIGTERM for ${seconds}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    vg_forget "$pid"
    return "$rc"
}

# vg_forget PID — drops a reaped process from the registry, so that the cleanup never signals a
# later, unrelated process that reuses its pid.
vg_forget() {
    local i
    for i in "${!VG_PIDS[@]}"; do
        [[ ${VG_PIDS[i]} != "$1" ]] || unset 'VG_PIDS[i]'
    done
    VG_PIDS=("${VG_PIDS[@]}")
}

vg_dead() {
    ! vg_alive "$1"
}

vg_now_ns() {
    date +%s%N
}

# vg_wait_until SECONDS CMD... — polls CMD every 0.2 s until it succeeds (0) or SECONDS pass (1).
vg_wait_until() {
    local seconds=$1
    shift
    local deadline=$(($(vg_now_ns) + seconds * 1000000000))
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if (($(vg_now_ns) >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

# vg_cleanup — stops every registered process (newest first), then anything still running in
# our namespaces (by pid, from `ip netns pids`), then deletes the namespaces, which removes
# their veths and bridges. Safe to call twice.
vg_cleanup() {
    [[ $VG_CLEANED == 0 ]] || return 0
    VG_CLEANED=1
    local i pid ns
    for ((i = ${#VG_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${VG_PIDS[i]}
        if vg_alive "$pid"; then
            vg_stop "$pid" 3 || true
        fi
    done
    for ((i = ${#VG_NAMESPACES[@]} - 1; i >= 0; i--)); do
        ns=${VG_NAMESPACES[i]}
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || vg_log "could not delete namespace $ns"
    done
}
