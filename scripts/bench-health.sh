#!/usr/bin/env bash
# What health checks cost: `sudo ./scripts/bench-health.sh [--backends N] [--seconds S]`.
#
# vipgate checks a pool of N backends (default 200, addresses 198.18.0.20 on, all on one host
# namespace running an HTTP server on port 80) with HTTP checks every second, and the script
# reports the CPU time the health-check thread (vipgate-health) and the whole daemon used over
# S seconds (default 30), as a share of one core, with every backend's health at the end.
#
#   rtr 203.0.113.254 --- vg-pub [vipgate] vg-priv --- hosts 198.18.0.20 .. (N addresses)
#
# Environment: LAB_NO_APT=1 and LAB_VIPGATE_BIN as for scripts/lab.sh.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/netns.sh
. "$repo_root/scripts/lib/netns.sh"

backends=200
seconds=30
while (($# > 0)); do
    case $1 in
    --backends)
        backends=${2:?--backends needs a number}
        shift
        ;;
    --seconds)
        seconds=${2:?--seconds needs a number}
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
((backends >= 1 && backends <= 230)) || vg_die "--backends: 1 to 230"

vg_require_root
tools=(ip:iproute2 ethtool:ethtool python3:python3)
[[ -n ${LAB_VIPGATE_BIN:-} ]] || tools+=(cc:gcc /usr/include/stdio.h:libc6-dev update-ca-certificates:ca-certificates)
vg_ensure_tools "${tools[@]}"

prefix="vgbh-$$-"
workdir=$(mktemp -d /tmp/vgbh.XXXXXX)
cleanup() {
    vg_cleanup
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n ${LAB_VIPGATE_BIN:-} ]]; then
    vipgate=$LAB_VIPGATE_BIN
else
    vg_log "building vipgate (cargo build --release -p vipgate)"
    vg_cargo "$repo_root" build --release -p vipgate
    vipgate=$(vg_release_dir "$repo_root")/vipgate
fi

for n in rtr gw hosts; do
    vg_ns_create "$prefix$n"
done
vg_veth "${prefix}rtr" r-pub "${prefix}gw" vg-pub
vg_veth "${prefix}gw" vg-priv "${prefix}hosts" eth0
vg_tx_off "${prefix}rtr" r-pub
vg_tx_off "${prefix}hosts" eth0
vg_addr "${prefix}rtr" r-pub 203.0.113.254/24
list=""
for ((i = 0; i < backends; i++)); do
    a=198.18.0.$((20 + i))
    vg_addr "${prefix}hosts" eth0 "$a/24"
    list+="    { addr = \"$a\", port = 80 },"$'\n'
done
ip -n "${prefix}hosts" route add default via 198.18.0.1
mkdir -p "$workdir/www"
echo ok >"$workdir/www/healthz"
vg_spawn "${prefix}hosts" /dev/null "$workdir/www.log" python3 -m http.server 80 --directory "$workdir/www"

cat >"$workdir/vipgate.toml" <<EOF
[workers]
cores = [0]
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
vips = ["203.0.113.10"]
capacity = 65536
[[nat.pools]]
name = "web"
vip = "203.0.113.10"
proto = "tcp"
port = 80
backends = [
$list]
check = { type = "http", path = "/healthz", interval_ms = 1000, timeout_ms = 900 }
EOF
vg_spawn "${prefix}gw" "$workdir/vipgate.out" "$workdir/vipgate.err" \
    env "VIPGATE_CONTROL__SOCKET=$workdir/control.sock" "$vipgate" run --config "$workdir/vipgate.toml"
pid=$VG_LAST_PID
all_up() {
    "$vipgate" backends --json --socket "$workdir/control.sock" 2>/dev/null |
        python3 -c 'import json,sys; b=json.load(sys.stdin)["backends"]; sys.exit(0 if b and all(x["health"]=="up" for x in b) else 1)'
}
vg_wait_until 60 all_up || vg_die "not every backend came up within 60 s; see $workdir/vipgate.err"

# The daemon's pid inside the namespace: the child of `ip netns exec` is vipgate itself.
daemon=$(pgrep -f "run --config $workdir/vipgate.toml" | head -n 1)
ticks() { # utime+stime of the threads named $1 (all threads with "all")
    local sum=0 t comm stat
    for t in /proc/"$daemon"/task/*; do
        comm=$(cat "$t/comm")
        [[ $1 == all || $comm == "$1" ]] || continue
        stat=$(cat "$t/stat")
        stat=${stat##*) }
        read -r -a f <<<"$stat"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}
hz=$(getconf CLK_TCK)
h0=$(ticks vipgate-health)
a0=$(ticks all)
sleep "$seconds"
h1=$(ticks vipgate-health)
a1=$(ticks all)
up=$("$vipgate" backends --json --socket "$workdir/control.sock" |
    python3 -c 'import json,sys; b=json.load(sys.stdin)["backends"]; print(sum(x["health"]=="up" for x in b))')
health=$(python3 -c "print(f'{($h1 - $h0) * 100 / ($hz * $seconds):.2f}')")
whole=$(python3 -c "print(f'{($a1 - $a0) * 100 / ($hz * $seconds):.2f}')")
printf '| backends | interval | check | health thread CPU | whole daemon CPU (idle worker included) | up at the end |\n'
printf '|---|---|---|---|---|---|\n'
printf '| %d | 1 s | HTTP GET /healthz | %s %% of a core | %s %% of a core | %d of %d |\n' \
    "$backends" "$health" "$whole" "$up" "$backends"
vg_stop "$pid" 10 >/dev/null || true
