#!/usr/bin/env bash
# End-to-end forwarding rate through one gateway core: `sudo ./scripts/bench-e2e.sh`.
#
# A generator namespace floods UDP (1024 flows, 60-byte frames) at the gateway namespace, which
# forwards to a sink namespace that counts and drops. Gateways, measured in the same run in
# alternating rounds so that machine noise spreads over all of them:
#   kernel   plain IP forwarding (sent straight to 198.18.0.10 with a route via the gateway)
#   nft      kernel forwarding + nftables DNAT 203.0.113.10:5353 -> 198.18.0.10:5353 (conntrack)
#   vg-skb   vipgate, one worker, generic XDP, the same DNAT rule
#   vg-drv   vipgate, one worker, native XDP (veth copy mode)
#
#   gen 203.0.113.254 --- vg-pub [gateway] vg-priv --- sink 198.18.0.10
#   (udpgen on CPU 1)     (everything of the gateway on CPU 0)   (drops at ingress, on CPU 1)
#
# The gateway core is CPU 0: vipgate's worker is pinned there by its config, and the kernel's
# share is steered there too (RPS on vg-pub for the kernel paths and generic XDP; a threaded,
# pinned NAPI for native XDP, which otherwise runs on the sender's CPU). The sink's receive
# work goes to CPU 1, as if it were another machine.
#
# Printed: a markdown table (medians over the rounds) for docs/BENCHMARKS.md, then every
# round's figures. "forwarded" is the sink interface's rx_packets over the window; "offered"
# the gateway's vg-pub rx_packets over the same window: what the generator got into it (it
# retries when the interface pushes back, so it keeps the gateway saturated when it can; a
# gateway core well below 100% means the generator was the limit). "gateway core used" is
# the share of CPU 0 the traffic took, measured by what it left to an idle-class soaker
# (cyclesoak: see start_soaker below); other work on the machine that lands on CPU 0 counts
# in it too, hence the load average in the output. Per forwarded frame it is the figure that
# compares data planes fairly on veth (shared/AFXDP-NOTES.md). "vipgate + NAPI thread CPU
# time" is what the kernel charged to those tasks, softirq work that interrupted them
# included.
#
# Every gateway runs twice per round: flooded (its maximum rate) and at one fixed offered rate
# that all of them can carry (--rate), where their CPU time per packet compares directly.
#
# Options: --rounds N (3), --seconds S (5, the measurement window), --gateways LIST
# (kernel,nft,vg-skb,vg-drv), --flows N (1024), --rate PPS (100000; 0 = flood only).
# Environment: LAB_NO_APT=1 (skip apt when every tool is present), LAB_VIPGATE_BIN (a vipgate
# binary instead of building one); without a vipgate binary that builds, its rows are skipped
# loudly. VIPGATE_* variables reach vipgate as configuration overrides, e.g.
# VIPGATE_XDP__RING=4096.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/netns.sh
. "$repo_root/scripts/lib/netns.sh"

readonly VIP=203.0.113.10
readonly SINK=198.18.0.10
readonly SRC=198.51.100.100
readonly GW_CPU=0
readonly GEN_CPU=1
readonly WARMUP=1
# Seconds of the soaker's reference rate before each run.
readonly CALIBRATE=1

rounds=3
rate=100000
window=5
flows=1024
gateways=kernel,nft,vg-skb,vg-drv
while (($# > 0)); do
    case $1 in
    --rounds | --seconds | --gateways | --flows | --rate)
        (($# >= 2)) || vg_die "$1 needs a value"
        case $1 in
        --rounds) rounds=$2 ;;
        --seconds) window=$2 ;;
        --gateways) gateways=$2 ;;
        --flows) flows=$2 ;;
        --rate) rate=$2 ;;
        esac
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) vg_die "unknown argument $1 (try --help)" ;;
    esac
    shift
done
in_range() {
    if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < $3 || $2 > $4)); then
        vg_die "$1: $2; expected $3 to $4"
    fi
}
in_range --rounds "$rounds" 1 20
in_range --seconds "$window" 1 60
in_range --flows "$flows" 1 50000
in_range --rate "$rate" 0 10000000
IFS=, read -r -a gw_list <<<"$gateways"
for gw in "${gw_list[@]}"; do
    case $gw in
    kernel | nft | vg-skb | vg-drv) ;;
    *) vg_die "--gateways: $gw is not a gateway; expected kernel, nft, vg-skb or vg-drv" ;;
    esac
done

vg_require_root
(($(nproc) >= 2)) || vg_die "needs 2 CPUs: one for the gateway, one for the generator"
vg_ensure_tools ip:iproute2 ethtool:ethtool nft:nftables taskset:util-linux ping:iputils-ping \
    ps:procps cc:gcc /usr/include/stdio.h:libc6-dev update-ca-certificates:ca-certificates

workdir=$(mktemp -d /tmp/vgbench.XXXXXX)
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    vg_cleanup
    rm -rf "$workdir"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

vg_log "building udpgen and cpusoak (cargo build --release -p vipgate-benches)"
vg_cargo "$repo_root" build --release -q -p vipgate-benches --bin udpgen --bin cpusoak
udpgen=$(vg_release_dir "$repo_root")/udpgen
cpusoak=$(vg_release_dir "$repo_root")/cpusoak

vipgate=
want_vipgate=0
for gw in "${gw_list[@]}"; do
    [[ $gw != vg-* ]] || want_vipgate=1
done
if ((want_vipgate)); then
    if [[ -n ${LAB_VIPGATE_BIN:-} ]]; then
        vipgate=$LAB_VIPGATE_BIN
    else
        vg_log "building vipgate (cargo build --release -p vipgate)"
        if vg_cargo "$repo_root" build --release -q -p vipgate; then
            vipgate=$(vg_release_dir "$repo_root")/vipgate
        fi
    fi
    if [[ -z $vipgate || ! -x $vipgate ]]; then
        vg_log "!!! no vipgate binary: the vg-skb and vg-drv rows are skipped"
        vipgate=
    fi
fi

# The private side of every gateway is the sink alone; the public side the generator, which
# also plays the upstream router 203.0.113.254 of vipgate's config.
write_vipgate_config() {
    cat >"$2" <<EOF
[workers]
cores = [$GW_CPU]

[xdp]
mode = "$1"

[[interfaces]]
name = "vg-pub"
side = "public"
address = "203.0.113.1/24"
gateway = "203.0.113.254"

[[interfaces]]
name = "vg-priv"
side = "private"
address = "198.18.0.1/24"

[nat]
vips = ["$VIP"]
capacity = 65536

[[nat.dnat]]
vip = "$VIP"
proto = "udp"
port = 5353
to = "$SINK"
to_port = 5353

[log]
level = "info"
EOF
}

# One generator/gateway/sink trio per gateway, made once: a gateway's rounds then find the
# same neighbours, conntrack entries and interfaces, and no round inherits another gateway's
# XDP or nftables state.
setup_trio() {
    local gw=$1 p="vgbench-$$-$1-"
    local gen=${p}gen gwns=${p}gw sink=${p}sink
    vg_ns_create "$gen"
    vg_ns_create "$gwns"
    vg_ns_create "$sink"
    # One queue per end: the single worker polls queue 0, and native XDP on veth delivers a
    # frame on the queue matching the sender's TX queue.
    vg_veth "$gen" gen0 "$gwns" vg-pub 1
    vg_veth "$gwns" vg-priv "$sink" eth0 1
    vg_tx_off "$gen" gen0
    vg_tx_off "$sink" eth0
    vg_addr "$gen" gen0 203.0.113.254/24
    vg_addr "$sink" eth0 "$SINK/24"
    ip -n "$sink" route add default via 198.18.0.1
    # Count, then drop at ingress: no socket lookup and no port-unreachable storm back.
    ip netns exec "$sink" nft -f - <<EOF
table netdev vgbench {
    chain ingress {
        type filter hook ingress device "eth0" priority -500; policy accept;
        udp dport 5353 drop
    }
}
EOF
    ip netns exec "$sink" sh -c "echo $((1 << GEN_CPU)) > /sys/class/net/eth0/queues/rx-0/rps_cpus"
    ip netns exec "$gwns" sh -c "echo $((1 << GW_CPU)) > /sys/class/net/vg-pub/queues/rx-0/rps_cpus"
    case $gw in
    kernel | nft)
        vg_addr "$gwns" vg-pub 203.0.113.1/24
        vg_addr "$gwns" vg-priv 198.18.0.1/24
        ip -n "$gwns" route add default via 203.0.113.254
        vg_sysctl "$gwns" net.ipv4.ip_forward=1
        ;;
    vg-skb) write_vipgate_config skb "$workdir/$gw.toml" ;;
    vg-drv) write_vipgate_config drv "$workdir/$gw.toml" ;;
    esac
    if [[ $gw == vg-* ]]; then
        # In the gateway's namespace, where check also finds the interfaces.
        ip netns exec "$gwns" "$vipgate" check --config "$workdir/$gw.toml" >/dev/null ||
            vg_die "vipgate rejects the benchmark's config:$(printf '\n'; cat "$workdir/$gw.toml")"
    fi
    if [[ $gw == nft ]]; then
        ip netns exec "$gwns" nft -f - <<EOF
table ip vgbench {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $VIP udp dport 5353 dnat to $SINK:5353
    }
}
EOF
    fi
}

# Ticks (utime + stime) of the given pids; fields counted after the ")" that closes the name.
task_ticks() {
    local pid sum=0 t
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || continue
        t=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
        sum=$((sum + t))
    done
    echo "$sum"
}

# "t_ns sink_rx gateway_rx task_ticks soak_ns soak_count" in one line, for one end of a
# window.
snapshot() {
    local sink=$1 gwns=$2 t rx in
    shift 2
    t=$(vg_now_ns)
    rx=$(ip netns exec "$sink" cat /sys/class/net/eth0/statistics/rx_packets)
    in=$(ip netns exec "$gwns" cat /sys/class/net/vg-pub/statistics/rx_packets)
    printf '%s %s %s %s %s\n' "$t" "$rx" "$in" "$(task_ticks "$@")" "$(soak_now)"
}

# The gateway core's use is measured by what it leaves to cpusoak (benches/src/bin/cpusoak.rs):
# a counter spinning on CPU 0 in the idle scheduling class, so that anything else on the core
# runs first. Its rate over a window against its rate just before, with the gateway up and no
# traffic, is the share of the core the traffic cost: softirq work included, whichever task
# the kernel charges it to (the /proc/stat and per-task figures miss or misplace it here).
start_soaker() {
    chrt --idle 0 taskset -c "$GW_CPU" "$cpusoak" --seconds 86400 </dev/null >"$workdir/soak" 2>&1 &
    soaker=$!
    VG_PIDS+=("$soaker")
    vg_wait_until 5 test -s "$workdir/soak" || vg_die "cpusoak did not start"
}

# "ns count": the soaker's last report (its lines are written whole, every 10 ms).
soak_now() {
    tail -n 1 "$workdir/soak"
}

# soak_rate SECONDS — the soaker's count per second over SECONDS, as a reference.
soak_rate() {
    local a b
    a=$(soak_now)
    sleep "$1"
    b=$(soak_now)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        print (y[1] > x[1]) ? (y[2] - x[2]) * 1e9 / (y[1] - x[1]) : 0 }'
}

# Native XDP on veth polls in NAPI; threaded, that work leaves the sender's CPU for a kernel
# thread napi/vg-pub-<id> that can be pinned to the gateway core (its time is system time of
# that thread, not softirq, so it is measured as a task). Threads that exist before the switch
# belong to other namespaces (the name is not unique) and are left alone.
napi_threads() {
    ps -eo pid=,comm= | awk '$2 ~ /^napi\/vg-pub-/ { print $1 }' | sort
}

new_napi_threads() {
    comm -13 "$1" <(napi_threads) | grep -q .
}

# Prints the pinned threads' pids. The "before" list is taken before vipgate attaches: once a
# device is threaded, every later attach starts its thread at once.
pin_napi_threads() {
    local gwns=$1 pid
    ip netns exec "$gwns" sh -c 'echo 1 > /sys/class/net/vg-pub/threaded' || return 1
    vg_wait_until 5 new_napi_threads "$workdir/napi.before" || return 1
    for pid in $(comm -13 "$workdir/napi.before" <(napi_threads)); do
        taskset -pc "$GW_CPU" "$pid" >/dev/null
        echo "$pid"
    done
}

results=$workdir/results
: >"$results"

# run_round GW PACE ROUND — one round of one gateway at one offered load (PACE: "flood" or
# frames per second). Appends "GW:PACE round forwarded_pps offered_pps attempted_pps
# core_used% ns_per_pkt vipgate_threads%" to $results, and vipgate's counters to
# $workdir/GW:PACE.rROUND.counters.
run_round() {
    local gw=$1 pace=$2 round=$3 p="vgbench-$$-$1-"
    local gen=${p}gen gwns=${p}gw sink=${p}sink
    local dst=$VIP gw_pid='' gen_pid rc=0 tasks=() pacing=(--batch 256)
    local tag="$gw:$pace.r$round"
    [[ $gw != kernel ]] || dst=$SINK
    # Small batches when paced: the gateway should see a steady stream, not 256-frame bursts.
    [[ $pace == flood ]] || pacing=(--batch 32 --rate "$pace")
    if [[ $gw == vg-* ]]; then
        napi_threads >"$workdir/napi.before"
        vg_spawn "$gwns" "$workdir/$tag.out" "$workdir/$tag.err" \
            "$vipgate" run --config "$workdir/$gw.toml"
        gw_pid=$VG_LAST_PID
        vg_wait_until 30 ip netns exec "$gen" ping -n -c 1 -W 1 "$VIP" || {
            vg_log "$gw: the VIP did not answer ping within 30 s; vipgate said:"
            tail -n 5 "$workdir/$tag.err" >&2
            vg_stop "$gw_pid" 5 || true
            return 1
        }
        tasks+=("$gw_pid")
        if [[ $gw == vg-drv ]]; then
            pin_napi_threads "$gwns" >"$workdir/napi.pids" ||
                vg_log "$gw: could not pin the NAPI thread to CPU $GW_CPU; XDP runs on the sender's CPU"
            mapfile -t -O "${#tasks[@]}" tasks <"$workdir/napi.pids"
        fi
    fi
    local dmac idle_rate
    dmac=$(vg_mac "$gwns" vg-pub)
    # The soaker's rate on the core as the gateway leaves it without traffic: the reference
    # that the window's rate is read against.
    idle_rate=$(soak_rate "$CALIBRATE")
    local seconds=$((WARMUP + window + 1))
    vg_spawn "$gen" "$workdir/gen.out" "$workdir/gen.err" taskset -c "$GEN_CPU" "$udpgen" \
        --ifname gen0 --dst-mac "$dmac" --src "$SRC" --dst "$dst" --dport 5353 \
        --flows "$flows" "${pacing[@]}" --seconds "$seconds"
    gen_pid=$VG_LAST_PID
    sleep "$WARMUP"
    local s0 s1
    s0=$(snapshot "$sink" "$gwns" "${tasks[@]}")
    sleep "$window"
    s1=$(snapshot "$sink" "$gwns" "${tasks[@]}")
    vg_wait_until $((seconds + 10)) vg_dead "$gen_pid" || vg_log "udpgen overran its --seconds"
    vg_stop "$gen_pid" 1 || rc=$?
    if ((rc != 0)) || ! grep -q '^udpgen sent=' "$workdir/gen.out"; then
        vg_log "$gw: udpgen failed (status $rc):"
        cat "$workdir/gen.err" >&2
        [[ -z $gw_pid ]] || vg_stop "$gw_pid" 5 || true
        return 1
    fi
    if [[ -n $gw_pid ]]; then
        rc=0
        vg_stop "$gw_pid" 10 || rc=$?
        ((rc == 0)) || vg_log "$gw: vipgate exited with status $rc on SIGTERM"
        grep '^counter ' "$workdir/$tag.out" >"$workdir/$tag.counters" || true
    fi
    local gen_line
    gen_line=$(cat "$workdir/gen.out")
    # Figures from the two snapshots and the generator's summary line.
    awk -v gw="$gw:$pace" -v round="$round" -v s0="$s0" -v s1="$s1" -v gen="$gen_line" \
        -v hz="$(getconf CLK_TCK)" -v idle_rate="$idle_rate" '
    BEGIN {
        split(s0, a, " "); split(s1, b, " ")
        secs = (b[1] - a[1]) / 1e9
        fwd = (b[2] - a[2]) / secs
        offered = (b[3] - a[3]) / secs
        tasks = 100 * (b[4] - a[4]) / hz / secs
        soak = (b[5] > a[5] && idle_rate > 0) ? (b[6] - a[6]) * 1e9 / (b[5] - a[5]) / idle_rate : 1
        used = 1 - soak
        if (used < 0) used = 0
        ns_pkt = fwd > 0 ? used * 1e9 / fwd : 0
        n = split(gen, g, /[ =]/)
        for (i = 2; i < n; i += 2) v[g[i]] = g[i + 1]
        attempts = (v["sent"] + v["retries"]) / v["seconds"]
        printf "%s %d %.0f %.0f %.0f %.1f %.0f %.1f\n", gw, round, fwd, offered, attempts,
            100 * used, ns_pkt, tasks
    }' >>"$results"
    tail -n 1 "$results" | awk '{ printf "  %-14s round %d: forwarded %.3f Mpps, offered %.3f Mpps, gateway core used %s%%, %s ns/pkt\n",
        $1, $2, $3 / 1e6, $4 / 1e6, $6, $7 }' >&2
}

load=$(cut -d' ' -f1-3 /proc/loadavg)
vg_log "load average before the run: $load (other work on the 2 CPUs skews every row)"
active=()
for gw in "${gw_list[@]}"; do
    if [[ $gw == vg-* && -z $vipgate ]]; then
        continue
    fi
    setup_trio "$gw"
    active+=("$gw")
done
((${#active[@]} > 0)) || vg_die "nothing to measure"

start_soaker
paces=(flood)
((rate == 0)) || paces+=("$rate")
failed=()
for ((round = 1; round <= rounds; round++)); do
    vg_log "round $round of $rounds: ${active[*]}, offered: ${paces[*]}"
    for pace in "${paces[@]}"; do
        for gw in "${active[@]}"; do
            run_round "$gw" "$pace" "$round" || failed+=("$gw:$pace round $round")
        done
    done
done

commit=$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo_root" status --porcelain 2>/dev/null) ]]; then
    commit="$commit (with uncommitted changes)"
fi

label() {
    local pace=${1#*:}
    if [[ $pace == flood ]]; then
        pace="flood"
    else
        pace="$(awk -v r="$pace" 'BEGIN { print r / 1e6 }') Mpps offered"
    fi
    case ${1%%:*} in
    kernel) echo "kernel IP forwarding, $pace" ;;
    nft) echo "kernel + nftables DNAT, $pace" ;;
    vg-skb) echo "vipgate, generic XDP (skb), $pace" ;;
    vg-drv) echo "vipgate, native XDP (drv), $pace" ;;
    esac
}

# median COLUMN CASE — the median of one column over the rounds of CASE (GW:PACE).
median() {
    awk -v gw="$2" -v col="$1" '$1 == gw { print $col }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2];
            else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

printf '\n### End-to-end, one gateway core (scripts/bench-e2e.sh)\n\n'
printf '%s, Linux %s, %s CPUs (%s), commit %s. UDP 60-byte frames, %s flows, %s rounds x %s s\n' \
    "$(date -u +%Y-%m-%d)" "$(uname -r)" "$(nproc)" \
    "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" "$commit" \
    "$flows" "$rounds" "$window"
printf 'per case, alternating; medians of each column. Gateway on CPU 0, generator on CPU 1;'
printf ' load average before: %s.\n\n' "$load"
printf '| gateway | forwarded Mpps | offered Mpps | gateway core used | ns of the core per forwarded packet | vipgate + NAPI thread CPU time |\n'
printf '|---|---:|---:|---:|---:|---:|\n'
for pace in "${paces[@]}"; do
    for gw in "${active[@]}"; do
        c="$gw:$pace"
        fwd=$(median 3 "$c")
        [[ $fwd != - ]] || continue
        threads=-
        [[ $gw != vg-* ]] || threads="$(median 8 "$c")%"
        printf '| %s | %.3f | %.3f | %s%% | %.0f | %s |\n' "$(label "$c")" \
            "$(awk -v v="$fwd" 'BEGIN { print v / 1e6 }')" \
            "$(awk -v v="$(median 4 "$c")" 'BEGIN { print v / 1e6 }')" \
            "$(median 6 "$c")" "$(median 7 "$c")" "$threads"
    done
done

printf '\nEvery round (gateway:offered, round, forwarded pps, offered pps, attempted pps, core used %%,'
printf ' ns/pkt, vipgate threads CPU %%):\n\n```\n'
cat "$results"
printf '```\n'
for f in "$workdir"/*.counters; do
    [[ -e $f ]] || continue
    printf '\n%s non-zero vipgate counters: %s\n' "$(basename "$f" .counters)" \
        "$(awk '$3 != 0 { printf "%s=%s ", $2, $3 }' "$f")"
done
if ((${#failed[@]} > 0)); then
    printf '\nFAILED: %s\n' "${failed[*]}"
    exit 1
fi
