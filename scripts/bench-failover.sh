#!/usr/bin/env bash
# Failover, side by side: `sudo ./scripts/bench-failover.sh`.
#
# The same failover workload on the same two-box namespace topology (vipgate-netns's pair:
# client, router, two gateway boxes on shared public and private segments with a sync link,
# internal hosts) against vipgate (VRRPv3 election and its own state sync) and against the
# kernel with keepalived, conntrackd (FTFW over the sync link) and nftables, the Debian
# packages, with the failover script of conntrackd's Debian example (primary-backup.sh).
#
# For each advert interval, failure mode and stack, several rounds on a fresh pair each:
# 200 long-lived TCP connections through the VIP (VIP:80 DNAT to h1:80) exchanging a short
# line every 50 ms each, and a UDP probe (one datagram a millisecond to VIP:5353, DNAT to an
# echo on h1). Once the standby holds every connection, the master fails:
#   kill    SIGKILL to every process of the box (vipgate; keepalived, conntrackd)
#   links   its two data links down (from the network's side, a box that died)
#   stop    a graceful stop (SIGTERM: vipgate; keepalived, then conntrackd)
#   flap    no failure: the public switch drops the master's adverts towards the backup for
#           three intervals and 100 ms, so the backup takes over and yields again (a
#           spurious takeover, as a late advert makes one)
# Reported, medians over the rounds: the traffic gap (the probe's longest run of lost
# datagrams), connections kept (of 200: each must exchange 3 more lines within 30 s), the
# worst connection's stall, when the backup's first advert appeared. Then the state sync's
# bulk throughput (100,000 connections) and its lag (one connection at a time), and a
# steady period with 10 ms adverts under the same load (role changes, advert spacing).
# docs/BENCHMARKS.md says what each number means and how it is measured; the driver is
# benches/src/bin/failover.rs.
#
# Options: --rounds N (5), --intervals LIST (1000,100,10: advert intervals in ms, multiples
# of 10), --modes LIST (kill,links,stop,flap), --stacks LIST (vipgate,kernel), --parts LIST
# (failover,sync,steady), --steady-secs S (60; --steady-secs 600 for ten minutes),
# --sync-conns N (100000), --lag-samples N (200), --xdp-mode skb|drv (skb), --cores
# split|shared (split: each vipgate box's worker on a CPU of its own, as two machines would
# have; shared: both on CPU 0, as the HA tests), --be-liberal (the kernel boxes with
# net.netfilter.nf_conntrack_tcp_be_liberal=1: no TCP window tracking), --write (put the
# results into docs/BENCHMARKS.md between its markers), --log-dir DIR (every run's logs;
# default a new directory under /tmp, kept).
# Environment: LAB_NO_APT=1 (skip apt when every tool is present), LAB_VIPGATE_BIN (a vipgate
# binary instead of building one).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/netns.sh
. "$repo_root/scripts/lib/netns.sh"

args=()
write=0
log_dir=
command_line="./scripts/bench-failover.sh${*:+ $*}"
while (($# > 0)); do
    case $1 in
    --rounds | --intervals | --modes | --stacks | --parts | --steady-secs | --sync-conns | \
        --lag-samples | --xdp-mode | --cores)
        (($# >= 2)) || vg_die "$1 needs a value"
        args+=("$1" "$2")
        shift
        ;;
    --log-dir)
        (($# >= 2)) || vg_die "$1 needs a value"
        log_dir=$2
        shift
        ;;
    --write) write=1 ;;
    --be-liberal) args+=(--be-liberal 1) ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) vg_die "unknown argument $1 (try --help)" ;;
    esac
    shift
done

vg_require_root
(($(nproc) >= 2)) || vg_die "needs 2 CPUs"

# Installing conntrackd or keepalived must not start their services in the root namespace:
# a policy-rc.d that refuses every start, only while apt runs and only if there is none.
policy=/usr/sbin/policy-rc.d
made_policy=0
workdir=
driver=
cleanup_driver() {
    # The driver removes its namespaces itself on SIGTERM; anything left (it was killed)
    # carries its pid in the name: vg<tag>-<pid>-<n>, and its files /tmp/vipgate-*-<pid>-<n>.
    [[ -n $driver ]] || return 0
    if vg_alive "$driver"; then
        kill -TERM "$driver" 2>/dev/null || true
        vg_wait_until 60 vg_dead "$driver" || kill -KILL "$driver" 2>/dev/null || true
    fi
    wait "$driver" 2>/dev/null || true
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E -- "^vg[A-Za-z0-9_]*-$driver-[0-9]+$" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || vg_log "could not delete namespace $ns"
    done
    rm -rf /tmp/vipgate-*-"$driver"-* 2>/dev/null || true
    driver=
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    cleanup_driver
    ((made_policy == 0)) || rm -f "$policy"
    [[ -z $workdir ]] || rm -rf "$workdir"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# bench-failover.sh: no service starts while it installs packages.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
vg_ensure_tools ip:iproute2 nft:nftables keepalived:keepalived conntrackd:conntrackd \
    ping:iputils-ping
if ((made_policy)); then
    rm -f "$policy"
    made_policy=0
fi

vg_log "building the failover driver (cargo build --release -p vipgate-benches --bin failover)"
vg_cargo "$repo_root" build --release -q -p vipgate-benches --bin failover
failover=$(vg_release_dir "$repo_root")/failover
if [[ -n ${LAB_VIPGATE_BIN:-} ]]; then
    vipgate=$LAB_VIPGATE_BIN
else
    vg_log "building vipgate (cargo build --release -p vipgate)"
    vg_cargo "$repo_root" build --release -q -p vipgate
    vipgate=$(vg_release_dir "$repo_root")/vipgate
fi
[[ -x $vipgate ]] || vg_die "no vipgate binary at $vipgate"

commit=$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$repo_root" diff --quiet HEAD -- 2>/dev/null; then
    commit="$commit (with uncommitted changes)"
fi
[[ -n $log_dir ]] || log_dir=/tmp/bench-failover-$(date +%Y%m%d-%H%M%S)
mkdir -p "$log_dir"
workdir=$(mktemp -d /tmp/vgfailover.XXXXXX)
((write == 0)) || args+=(--write "$repo_root/docs/BENCHMARKS.md")

vg_log "running; every run's logs go to $log_dir"
# In the background and waited for, so that a Ctrl-C reaches this shell's trap, which stops
# the driver with SIGTERM (it then removes its namespaces) instead of killing it mid-run.
rc=0
setsid "$failover" --vipgate "$vipgate" --log-dir "$log_dir" --commit "$commit" \
    --command "$command_line" "${args[@]}" >"$workdir/report.md" &
driver=$!
wait "$driver" || rc=$?
driver=
cat "$workdir/report.md"
((rc == 0)) || vg_log "the driver exited with $rc: some runs failed (see above and $log_dir)"
exit "$rc"
