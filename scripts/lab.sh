#!/usr/bin/env bash
# The vipgate lab, as root: `./scripts/lab.sh [--keep] [--mode skb|drv]`.
#
# Builds vipgate, puts it between a small internet and a private LAN made of network
# namespaces, runs web servers behind it and shows, one PASS/FAIL line per step, that it works:
# DNAT to a host, PAT for a host's outgoing connection, ping of the VIP, a load-balanced pool,
# a traceroute through it, and the operator's CLI (status, conns, reload) over the control
# socket. Then stops vipgate and prints its non-zero counters.
#
#   client 198.51.100.100/25 --+
#                               rtr 203.0.113.254 --- vg-pub [vipgate] vg-priv --- lan (br0) --- h1 198.18.0.10
#   inet   198.51.100.130/25 --+                      VIP 203.0.113.10                        +-- h2 198.18.0.11
#
# Options:
#   --ha          the high-availability lab instead (scripts/lab-ha.sh): two gateways, a failover
#                 under traffic, and the return of the old master
#   --keep        leave the lab running after the checks, until Ctrl-C, and print commands to try
#   --mode MODE   XDP attach mode: skb (generic, the config's default) or drv (native)
# Environment:
#   LAB_NO_APT=1     never run apt-get while every needed command is there, even if dpkg does
#                    not list its package (tools installed some other way)
#   LAB_VIPGATE_BIN  use this vipgate binary instead of building one (not VIPGATE_*: vipgate
#                    reads every VIPGATE_* variable as a configuration key)
#
# Everything it creates (namespaces vglab-<pid>-*, their veths, servers, vipgate) is removed on
# exit, error or Ctrl-C. Exit status: 0 when every step passed.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/netns.sh
. "$repo_root/scripts/lib/netns.sh"

readonly VIP=203.0.113.10
readonly H1=198.18.0.10
readonly H2=198.18.0.11
readonly INET=198.51.100.130
readonly CONFIG=$repo_root/configs/lab.toml

keep=0
mode=
for arg in "$@"; do
    if [[ $arg == --ha ]]; then
        exec "$repo_root/scripts/lab-ha.sh" "$@"
    fi
done
while (($# > 0)); do
    case $1 in
    --keep) keep=1 ;;
    --mode)
        (($# >= 2)) || vg_die "--mode needs a value: skb or drv"
        mode=$2
        shift
        ;;
    --mode=*) mode=${1#--mode=} ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) vg_die "unknown argument $1 (try --help)" ;;
    esac
    shift
done
case $mode in
"" | skb | drv) ;;
*) vg_die "--mode: $mode is not an XDP mode; expected skb or drv" ;;
esac

# The kernel stand-in (forwarding plus nftables NAT in the gateway namespace) lets the lab
# itself be checked without vipgate; bench-e2e.sh measures the same kernel paths.
gateway=${LAB_GATEWAY:-vipgate}
case $gateway in
vipgate | kernel) ;;
*) vg_die "LAB_GATEWAY: $gateway is not a gateway; expected vipgate or kernel" ;;
esac

vg_require_root

tools=(ip:iproute2 ethtool:ethtool curl:curl python3:python3 ping:iputils-ping
    traceroute:traceroute ps:procps)
if [[ $gateway == kernel ]]; then
    tools+=(nft:nftables)
elif [[ -z ${LAB_VIPGATE_BIN:-} ]]; then
    # The Rust toolchain links with the system C compiler and C library; crates.io needs CA
    # certificates.
    tools+=(cc:gcc /usr/include/stdio.h:libc6-dev update-ca-certificates:ca-certificates)
fi
vg_ensure_tools "${tools[@]}"

prefix="vglab-$$-"
ns_client=${prefix}client
ns_inet=${prefix}inet
ns_rtr=${prefix}rtr
ns_gw=${prefix}gw
ns_lan=${prefix}lan
ns_h1=${prefix}h1
ns_h2=${prefix}h2
workdir=$(mktemp -d /tmp/vglab.XXXXXX)
gw_pid=
gw_stopped=0
passed=0
failed=0

# Names, worker count: read from the config so the lab follows it if it changes.
read -r if_pub if_priv workers config_mode < <(python3 - "$CONFIG" 2>/dev/null <<'EOF' || echo "vg-pub vg-priv 1 skb"
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    c = tomllib.load(f)
side = {i["side"]: i["name"] for i in c["interfaces"]}
print(side["public"], side["private"], len(c["workers"]["cores"]), c.get("xdp", {}).get("mode", "skb"))
EOF
)

result() {
    local ok=$1
    shift
    if [[ $ok == 0 ]]; then
        printf '[PASS] %s\n' "$*"
        passed=$((passed + 1))
    else
        printf '[FAIL] %s\n' "$*"
        failed=$((failed + 1))
    fi
}

show() {
    sed 's/^/       | /' "$@"
}

# Stops the gateway once: SIGTERM makes vipgate detach XDP and print its counters.
stop_gateway() {
    [[ -n $gw_pid && $gw_stopped == 0 ]] || return 0
    gw_stopped=1
    if [[ $gateway == kernel ]]; then
        printf '\n== nftables counters in the kernel stand-in ==\n'
        ip netns exec "$ns_gw" nft list ruleset | show
        return 0
    fi
    local rc=0
    if vg_alive "$gw_pid"; then
        vg_stop "$gw_pid" 10 || rc=$?
        result "$rc" "vipgate stops on SIGTERM (exit status $rc)"
    else
        wait "$gw_pid" 2>/dev/null || rc=$?
        result 1 "vipgate was still running at the end (it exited earlier with status $rc)"
    fi
    printf '\n== vipgate counters (non-zero) ==\n'
    if grep -q '^counter ' "$workdir/vipgate.out"; then
        awk '$1 == "counter" && $3 != 0 { printf "  %-28s %s\n", $2, $3 }' "$workdir/vipgate.out"
    else
        result 1 "vipgate printed counters on stdout"
    fi
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    stop_gateway || true
    if ((failed > 0 || rc != 0)) && [[ -s $workdir/vipgate.err ]]; then
        printf '\n== last lines of vipgate stderr ==\n'
        tail -n 20 "$workdir/vipgate.err" | show
    fi
    vg_cleanup
    rm -rf "$workdir"
    if ((rc == 0 && failed > 0)); then
        rc=1
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $gateway == vipgate ]]; then
    [[ -f $CONFIG ]] || vg_die "$CONFIG not found"
    if [[ -n ${LAB_VIPGATE_BIN:-} ]]; then
        vipgate=$LAB_VIPGATE_BIN
    else
        vg_log "building vipgate (cargo build --release -p vipgate)"
        vg_cargo "$repo_root" build --release -p vipgate
        vipgate=$(vg_release_dir "$repo_root")/vipgate
    fi
    [[ -x $vipgate ]] || vg_die "$vipgate is not an executable"
    rc=0
    # The file only: its interfaces exist once the namespaces below do.
    "$vipgate" check --no-host --config "$CONFIG" >"$workdir/check.out" 2>&1 || rc=$?
    result "$rc" "vipgate check --no-host --config configs/lab.toml"
    ((rc == 0)) || {
        show "$workdir/check.out"
        exit 1
    }
fi

vg_log "creating namespaces ${prefix}{client,inet,rtr,gw,lan,h1,h2}"
for ns in "$ns_client" "$ns_inet" "$ns_rtr" "$ns_gw" "$ns_lan" "$ns_h1" "$ns_h2"; do
    vg_ns_create "$ns"
done

vg_veth "$ns_client" eth0 "$ns_rtr" r-client
vg_veth "$ns_inet" eth0 "$ns_rtr" r-inet
vg_veth "$ns_rtr" r-pub "$ns_gw" "$if_pub" "$workers"
vg_veth "$ns_gw" "$if_priv" "$ns_lan" br-gw "$workers"
vg_veth "$ns_lan" br-h1 "$ns_h1" eth0
vg_veth "$ns_lan" br-h2 "$ns_h2" eth0
for endpoint in "$ns_client eth0" "$ns_inet eth0" "$ns_rtr r-client" "$ns_rtr r-inet" \
    "$ns_rtr r-pub" "$ns_h1 eth0" "$ns_h2 eth0"; do
    # shellcheck disable=SC2086 # "namespace interface" pairs split on purpose
    vg_tx_off $endpoint
done

vg_addr "$ns_client" eth0 198.51.100.100/25
ip -n "$ns_client" route add default via 198.51.100.1
vg_addr "$ns_inet" eth0 "$INET/25"
ip -n "$ns_inet" route add default via 198.51.100.129
vg_addr "$ns_rtr" r-client 198.51.100.1/25
vg_addr "$ns_rtr" r-inet 198.51.100.129/25
vg_addr "$ns_rtr" r-pub 203.0.113.254/24
vg_sysctl "$ns_rtr" net.ipv4.ip_forward=1

ip -n "$ns_lan" link add br0 type bridge
ip -n "$ns_lan" link set br0 up
for port in br-gw br-h1 br-h2; do
    ip -n "$ns_lan" link set "$port" master br0
done
vg_addr "$ns_h1" eth0 "$H1/24"
ip -n "$ns_h1" route add default via 198.18.0.1
vg_addr "$ns_h2" eth0 "$H2/24"
ip -n "$ns_h2" route add default via 198.18.0.1

# Servers first: the checks below then only wait for the gateway.
mkdir -p "$workdir/h1-80" "$workdir/h1-8080" "$workdir/h2-8080"
echo "hello from h1 ($H1)" >"$workdir/h1-80/index.html"
echo "pool member h1 ($H1:8080)" >"$workdir/h1-8080/index.html"
echo "pool member h2 ($H2:8080)" >"$workdir/h2-8080/index.html"
vg_spawn "$ns_h1" /dev/null "$workdir/h1-80.log" python3 -m http.server 80 --bind "$H1" --directory "$workdir/h1-80"
vg_spawn "$ns_h1" /dev/null "$workdir/h1-8080.log" python3 -m http.server 8080 --bind "$H1" --directory "$workdir/h1-8080"
vg_spawn "$ns_h2" /dev/null "$workdir/h2-8080.log" python3 -m http.server 8080 --bind "$H2" --directory "$workdir/h2-8080"
vg_spawn "$ns_inet" /dev/null "$workdir/inet-80.log" python3 -c '
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("inet sees you as %s port %d\n" % self.client_address).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer((sys.argv[1], 80), Echo).serve_forever()
' "$INET"

server_up() {
    ip netns exec "$1" curl -sf --max-time 1 -o /dev/null "http://$2/"
}
for server in "$ns_h1 $H1" "$ns_h1 $H1:8080" "$ns_h2 $H2:8080" "$ns_inet $INET"; do
    # shellcheck disable=SC2086 # "namespace address" pairs split on purpose
    vg_wait_until 10 server_up $server || vg_die "server ${server#* } did not come up in 10 s"
done

if [[ $gateway == kernel ]]; then
    vg_log "starting the kernel stand-in gateway (LAB_GATEWAY=kernel)"
    vg_addr "$ns_gw" "$if_pub" 203.0.113.1/24
    vg_addr "$ns_gw" "$if_pub" "$VIP/24"
    vg_addr "$ns_gw" "$if_priv" 198.18.0.1/24
    ip -n "$ns_gw" route add default via 203.0.113.254
    vg_sysctl "$ns_gw" net.ipv4.ip_forward=1
    ip netns exec "$ns_gw" nft -f - <<EOF
table ip vglab {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $VIP tcp dport 80 counter dnat to $H1:80
        ip daddr $VIP udp dport 5353 counter dnat to $H1:5353
        ip daddr $VIP tcp dport 8080 counter dnat to numgen inc mod 2 map { 0 : $H1, 1 : $H2 }
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 198.18.0.0/24 oifname "$if_pub" counter snat to $VIP
    }
}
EOF
    # A stand-in pid so that the shared stop/cleanup paths treat both gateways alike.
    vg_spawn "$ns_gw" /dev/null /dev/null sleep 86400
    gw_pid=$VG_LAST_PID
else
    # Its own control socket, so the lab never meets another vipgate's.
    mode_env=("VIPGATE_CONTROL__SOCKET=$workdir/control.sock")
    [[ -z $mode ]] || mode_env+=("VIPGATE_XDP__MODE=$mode")
    vg_log "starting vipgate in ${prefix}gw (mode ${mode:-from the config})"
    vg_spawn "$ns_gw" "$workdir/vipgate.out" "$workdir/vipgate.err" \
        env "${mode_env[@]}" "$vipgate" run --config "$CONFIG"
    gw_pid=$VG_LAST_PID
fi

# Ready means answering: the VIP replies to ping from the client, through rtr. A gateway that
# died is reported at once instead of after the deadline.
vip_answers() {
    vg_alive "$gw_pid" || return 2
    ip netns exec "$ns_client" ping -n -c 1 -W 1 "$VIP" >/dev/null 2>&1
}
ready_start=$(vg_now_ns)
ready_rc=0
while true; do
    rc=0
    vip_answers || rc=$?
    if ((rc == 0)); then
        break
    elif ((rc == 2)); then
        ready_rc=2
        break
    elif (($(vg_now_ns) - ready_start > 30000000000)); then
        ready_rc=1
        break
    fi
    sleep 0.2
done
case $ready_rc in
0) result 0 "gateway ready: the VIP answers ping after $((($(vg_now_ns) - ready_start) / 1000000)) ms" ;;
1) result 1 "gateway ready: the VIP did not answer ping within 30 s" ;;
2) result 1 "gateway ready: $gateway exited during start-up" ;;
esac
((ready_rc == 0)) || exit 1

printf '\n== checks (gateway: %s%s) ==\n' "$gateway" "${mode:+, mode $mode}"

if [[ $gateway == vipgate ]]; then
    # The kernel names the attach mode it actually got: "xdpgeneric" (skb) or "xdp" (drv).
    want=${mode:-$config_mode}
    attached=$(ip -n "$ns_gw" -d link show dev "$if_pub" | grep -oE '\<xdp(generic|drv|offload)?\>' |
        head -n 1 || true)
    case $want:$attached in
    skb:xdpgeneric | drv:xdp | drv:xdpdrv) result 0 "XDP attached to $if_pub in $want mode ($attached)" ;;
    *) result 1 "XDP attached to $if_pub in $want mode (the kernel shows: ${attached:-nothing})" ;;
    esac
fi

# curl_step TEXT NS URL WANT — one PASS/FAIL line: curl URL from NS must succeed and its
# answer contain WANT (a fixed string).
curl_step() {
    local text=$1 ns=$2 url=$3 want=$4 out rc=0
    out=$(mktemp "$workdir/curl.XXXXXX")
    ip netns exec "$ns" curl -sS --max-time 5 "$url" >"$out" 2>&1 || rc=$?
    if ((rc == 0)) && grep -qF "$want" "$out"; then
        result 0 "$text: $(cat "$out")"
    else
        result 1 "$text: want an answer containing \"$want\" (curl status $rc)"
        show "$out"
    fi
}

# (a) DNAT: VIP:80 reaches h1.
curl_step "(a) DNAT: client curl http://$VIP/ answered by h1" "$ns_client" "http://$VIP/" \
    "hello from h1 ($H1)"

# (b) PAT: h1 reaches the internet host, which sees the VIP as the source.
curl_step "(b) PAT: h1 curl http://$INET/ answered" "$ns_h1" "http://$INET/" \
    "inet sees you as $VIP port"

# (c) ICMP echo to the VIP, answered by the gateway itself.
out=$workdir/c.out
rc=0
ip netns exec "$ns_client" ping -n -c 3 -i 0.2 -W 1 "$VIP" >"$out" 2>&1 || rc=$?
result "$rc" "(c) ping $VIP from client: $(grep -o '[0-9]* received' "$out" || echo 'no summary')"
((rc == 0)) || show "$out"

# (d) Pool: new connections (new source ports, so new hashes) spread over h1 and h2.
out=$workdir/d.out
: >"$out"
pool_errors=0
for _ in $(seq 1 12); do
    ip netns exec "$ns_client" curl -sS --max-time 5 "http://$VIP:8080/" >>"$out" 2>&1 ||
        pool_errors=$((pool_errors + 1))
done
n_h1=$(grep -cx "pool member h1 ($H1:8080)" "$out" || true)
n_h2=$(grep -cx "pool member h2 ($H2:8080)" "$out" || true)
if ((pool_errors == 0 && n_h1 + n_h2 == 12 && n_h1 > 0 && n_h2 > 0)); then
    result 0 "(d) pool $VIP:8080: 12 requests, h1 answered $n_h1, h2 answered $n_h2"
else
    result 1 "(d) pool $VIP:8080: 12 requests, h1 $n_h1, h2 $n_h2, failed $pool_errors (want all answered, both members used)"
    show "$out"
fi

# (e) traceroute from h1 out: hop 1 is the gateway's private address (time exceeded from the
# gateway itself), later hops' errors come back through the PAT mapping.
out=$workdir/e.out
rc=0
ip netns exec "$ns_h1" traceroute -n -q 1 -w 1 -m 5 "$INET" >"$out" 2>&1 || rc=$?
if ((rc == 0)) && awk '$1 == "1" && $2 == "198.18.0.1" { one = 1 } $2 == "'"$INET"'" { last = 1 }
    END { exit !(one && last) }' "$out"; then
    result 0 "(e) traceroute h1 -> $INET: $(awk 'NR > 1 { printf "%s ", $2 }' "$out")"
else
    result 1 "(e) traceroute h1 -> $INET: want hop 1 198.18.0.1 and $INET reached"
    show "$out"
fi

# (f) The operator's view: the running gateway answers its CLI over the control socket,
# lists the connections the steps above made, and reloads its file.
if [[ $gateway == vipgate ]]; then
    out=$workdir/f.out
    sock=(--socket "$workdir/control.sock")
    rc=0
    {
        "$vipgate" status "${sock[@]}" &&
            "$vipgate" conns "${sock[@]}" --vip "$VIP" --limit 5 &&
            "$vipgate" conns "${sock[@]}" --count &&
            "$vipgate" reload "${sock[@]}"
    } >"$out" 2>&1 || rc=$?
    if ((rc == 0)) && grep -q '^role *active' "$out" && grep -q '^reloaded' "$out"; then
        result 0 "(f) vipgate status, conns, reload over the control socket: $(grep -m1 ' connections$' "$out")"
    else
        result 1 "(f) vipgate status, conns, reload over the control socket"
    fi
    show "$out"
fi

if ((keep)); then
    cat <<EOF

== the lab stays up until Ctrl-C; try ==
  ip netns exec $ns_client curl http://$VIP/
  ip netns exec $ns_client curl http://$VIP:8080/
  ip netns exec $ns_client ping -c 3 $VIP
  ip netns exec $ns_h1 curl http://$INET/
  ip netns exec $ns_h1 traceroute -n $INET
  ip netns exec $ns_rtr ip neigh
  ip netns exec $ns_gw ip -d link show $if_pub      # the XDP program attached
  ip netns list | grep $prefix
EOF
    if [[ $gateway == vipgate ]]; then
        echo "  tail -f $workdir/vipgate.err                # vipgate's log"
        echo "  $vipgate status --socket $workdir/control.sock   # and stats, conns, vips, reload, standby, active"
    fi
    # Ctrl-C here is the normal end: it stops the wait, then the run finishes as without
    # --keep (counters, summary, exit status of the checks).
    trap ':' INT
    vg_spawn "$ns_gw" /dev/null /dev/null sleep 86400
    wait "$VG_LAST_PID" || true
    vg_stop "$VG_LAST_PID" 1 || true
    trap 'exit 130' INT
    printf '\n'
fi

stop_gateway
printf '\n%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
