#!/usr/bin/env bash
# The HA lab, as root: `./scripts/lab.sh --ha [--keep]` (or this script directly).
#
# Two vipgate boxes (configs/lab-ha-a.toml, priority 200, and configs/lab-ha-b.toml, 100) share
# the lab's public and private segments and a sync link. The lab starts a download and a few
# interactive connections through the VIP, and one from an internal host out through PAT,
# kills the master with SIGKILL, and shows every one of them continue on the standby, with
# the longest silence each saw. Then box a comes back, gets a bulk copy of the table and takes
# over again (it has the higher priority), and again nothing breaks.
#
#   client 198.51.100.100 --+                       +-- box a vg-pub 203.0.113.2 --+
#                            rtr 203.0.113.254 -- pub (br0)                          sync0 198.18.9.1/2
#   inet   198.51.100.130 --+                       +-- box b vg-pub 203.0.113.3 --+
#   box a vg-priv 198.18.0.2, box b vg-priv 198.18.0.3 -- lan (br0) -- h1 198.18.0.10, h2 198.18.0.11
#   VIP 203.0.113.10 and the hosts' gateway 198.18.0.1 live on the master
#
# Options:
#   --keep   leave the lab running after the checks, until Ctrl-C
# Environment: LAB_NO_APT=1 and LAB_VIPGATE_BIN as for scripts/lab.sh.
#
# Everything it creates (namespaces vgha-<pid>-*, veths, servers, both vipgates) is removed on
# exit, error or Ctrl-C. Exit status: 0 when every step passed.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/lib/netns.sh
. "$repo_root/scripts/lib/netns.sh"

readonly VIP=203.0.113.10
readonly H1=198.18.0.10
readonly H2=198.18.0.11
readonly INET=198.51.100.130
readonly CONFIGS=("$repo_root/configs/lab-ha-a.toml" "$repo_root/configs/lab-ha-b.toml")
# How long the flows run in all: long enough for a failover and a return.
readonly FLOW_SECS=25

keep=0
while (($# > 0)); do
    case $1 in
    --keep) keep=1 ;;
    --ha) ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) vg_die "unknown argument $1 (try --help)" ;;
    esac
    shift
done

vg_require_root
tools=(ip:iproute2 ethtool:ethtool curl:curl python3:python3 ps:procps)
if [[ -z ${LAB_VIPGATE_BIN:-} ]]; then
    tools+=(cc:gcc /usr/include/stdio.h:libc6-dev update-ca-certificates:ca-certificates)
fi
vg_ensure_tools "${tools[@]}"

prefix="vgha-$$-"
ns=(client inet rtr pub a b lan h1 h2)
workdir=$(mktemp -d /tmp/vgha.XXXXXX)
box_pid=("" "")
passed=0
failed=0

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

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    for i in 0 1; do
        if [[ -n ${box_pid[$i]} ]] && vg_alive "${box_pid[$i]}"; then
            vg_stop "${box_pid[$i]}" 10 || true
        fi
    done
    if ((failed > 0 || rc != 0)); then
        for i in 0 1; do
            [[ -s $workdir/box$i.err ]] || continue
            printf '\n== last lines of box %s stderr ==\n' "$([[ $i == 0 ]] && echo a || echo b)"
            tail -n 15 "$workdir/box$i.err" | show
        done
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

if [[ -n ${LAB_VIPGATE_BIN:-} ]]; then
    vipgate=$LAB_VIPGATE_BIN
else
    vg_log "building vipgate (cargo build --release -p vipgate)"
    vg_cargo "$repo_root" build --release -p vipgate
    vipgate=$(vg_release_dir "$repo_root")/vipgate
fi
[[ -x $vipgate ]] || vg_die "$vipgate is not an executable"
for c in "${CONFIGS[@]}"; do
    rc=0
    "$vipgate" check --no-host --config "$c" >"$workdir/check.out" 2>&1 || rc=$?
    result "$rc" "vipgate check --no-host --config configs/$(basename "$c")"
    ((rc == 0)) || {
        show "$workdir/check.out"
        exit 1
    }
done

n() { echo "${prefix}$1"; }
vg_log "creating namespaces ${prefix}{${ns[*]}}"
for x in "${ns[@]}"; do
    vg_ns_create "$(n "$x")"
done
vg_veth "$(n client)" eth0 "$(n rtr)" r-client
vg_veth "$(n inet)" eth0 "$(n rtr)" r-inet
vg_veth "$(n rtr)" r-pub "$(n pub)" sw-rtr
vg_veth "$(n a)" vg-pub "$(n pub)" sw-a
vg_veth "$(n b)" vg-pub "$(n pub)" sw-b
vg_veth "$(n a)" vg-priv "$(n lan)" p-a
vg_veth "$(n b)" vg-priv "$(n lan)" p-b
vg_veth "$(n a)" sync0 "$(n b)" sync0
vg_veth "$(n lan)" p-h1 "$(n h1)" eth0
vg_veth "$(n lan)" p-h2 "$(n h2)" eth0
for bridge in "pub sw-rtr sw-a sw-b" "lan p-a p-b p-h1 p-h2"; do
    read -r where ports <<<"$bridge"
    ip -n "$(n "$where")" link add br0 type bridge
    for port in $ports; do
        ip -n "$(n "$where")" link set "$port" master br0
    done
    ip -n "$(n "$where")" link set br0 up
done
for endpoint in "client eth0" "inet eth0" "rtr r-client" "rtr r-inet" "rtr r-pub" \
    "h1 eth0" "h2 eth0" "a sync0" "b sync0"; do
    read -r where dev <<<"$endpoint"
    vg_tx_off "$(n "$where")" "$dev"
done
vg_addr "$(n client)" eth0 198.51.100.100/25
ip -n "$(n client)" route add default via 198.51.100.1
vg_addr "$(n inet)" eth0 "$INET/25"
ip -n "$(n inet)" route add default via 198.51.100.129
vg_addr "$(n rtr)" r-client 198.51.100.1/25
vg_addr "$(n rtr)" r-inet 198.51.100.129/25
vg_addr "$(n rtr)" r-pub 203.0.113.254/24
vg_sysctl "$(n rtr)" net.ipv4.ip_forward=1
vg_addr "$(n a)" sync0 198.18.9.1/30
vg_addr "$(n b)" sync0 198.18.9.2/30
vg_addr "$(n h1)" eth0 "$H1/24"
ip -n "$(n h1)" route add default via 198.18.0.1
vg_addr "$(n h2)" eth0 "$H2/24"
ip -n "$(n h2)" route add default via 198.18.0.1

# Servers: a web server with a file to download on h1:80, line echo servers on h1:7 and
# inet:7 (for the internal host's connection out through PAT).
mkdir -p "$workdir/www"
head -c $((40 * 1024 * 1024)) /dev/urandom >"$workdir/www/big.bin"
vg_spawn "$(n h1)" /dev/null "$workdir/www.log" python3 -m http.server 80 --bind "$H1" --directory "$workdir/www"
cat >"$workdir/echo.py" <<'EOF'
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7))
s.listen(64)
def serve(c):
    with c:
        while True:
            d = c.recv(4096)
            if not d:
                return
            c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
vg_spawn "$(n h1)" /dev/null "$workdir/echo-h1.log" python3 "$workdir/echo.py" "$H1"
vg_spawn "$(n inet)" /dev/null "$workdir/echo-inet.log" python3 "$workdir/echo.py" "$INET"

start_box() {
    local i=$1
    vg_spawn "$(n "$([[ $i == 0 ]] && echo a || echo b)")" "$workdir/box$i.out" "$workdir/box$i.err" \
        env "VIPGATE_CONTROL__SOCKET=$workdir/box$i.sock" "$vipgate" run --config "${CONFIGS[$i]}"
    box_pid[i]=$VG_LAST_PID
}
ha_role() {
    "$vipgate" ha --json --socket "$workdir/box$1.sock" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["role"])' 2>/dev/null || echo none
}
role_is() { [[ $(ha_role "$1") == "$2" ]]; }
conn_count() {
    "$vipgate" conns --count --json --socket "$workdir/box$1.sock" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])' 2>/dev/null || echo 0
}
has_conns() { (($(conn_count "$1") >= $2)); }

vg_log "starting box a and box b"
start_box 0
start_box 1
rc=0
vg_wait_until 30 role_is 0 master && vg_wait_until 30 role_is 1 backup || rc=$?
result "$rc" "box a is master, box b backup"
((rc == 0)) || exit 1

# The flows: one download of 40 MB at 4 MB/s, three interactive sessions (a line every 20
# ms), one session from h2 out through PAT. Each interactive session prints its longest
# silence and whether every line came back.
cat >"$workdir/session.py" <<'EOF'
import socket, sys, time
host, secs = sys.argv[1], float(sys.argv[2])
s = socket.create_connection((host, 7), timeout=30)
s.settimeout(30)
end = time.monotonic() + secs
last = time.monotonic()
gap = 0.0
n = 0
try:
    while time.monotonic() < end:
        msg = b"line %d\n" % n
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(len(msg) - len(got))
            if not d:
                raise EOFError("closed")
            got += d
        if got != msg:
            raise ValueError("got %r for %r" % (got, msg))
        now = time.monotonic()
        gap = max(gap, now - last)
        last = now
        n += 1
        time.sleep(0.02)
    print("ok lines=%d longest_silence_ms=%d" % (n, gap * 1000))
except Exception as e:
    print("broken after %d lines: %s" % (n, e))
    sys.exit(1)
EOF
session_pids=()
for i in 1 2 3; do
    vg_spawn "$(n client)" "$workdir/session$i.out" "$workdir/session$i.err" \
        python3 "$workdir/session.py" "$VIP" "$FLOW_SECS"
    session_pids+=("$VG_LAST_PID")
done
vg_spawn "$(n h2)" "$workdir/session-pat.out" "$workdir/session-pat.err" \
    python3 "$workdir/session.py" "$INET" "$FLOW_SECS"
session_pids+=("$VG_LAST_PID")
vg_spawn "$(n client)" "$workdir/download.out" "$workdir/download.err" \
    curl -sS --max-time 60 --limit-rate 4M -o "$workdir/download.bin" \
    -w 'bytes=%{size_download} seconds=%{time_total}\n' "http://$VIP/big.bin"
download_pid=$VG_LAST_PID

# The standby must hold every flow (5 connections and the PAT mapping) before the crash.
rc=0
vg_wait_until 20 has_conns 1 6 || rc=$?
result "$rc" "box b holds the flows before the failure ($(conn_count 1) connections and mappings)"
sleep 2

printf '\n== killing box a (SIGKILL) ==\n'
killed_ns=$(vg_now_ns)
kill -KILL "${box_pid[0]}"
wait "${box_pid[0]}" 2>/dev/null || true
rc=0
vg_wait_until 10 role_is 1 master || rc=$?
result "$rc" "box b took over in $((($(vg_now_ns) - killed_ns) / 1000000)) ms (as its election saw it)"
grep -m1 'to=master' "$workdir/box1.err" | show || true
sleep 5

printf '\n== box a comes back ==\n'
vg_forget "${box_pid[0]}"
start_box 0
rc=0
vg_wait_until 30 role_is 0 master || rc=$?
result "$rc" "box a is master again, after its bulk copy"
grep -E 'bulk copy complete|to=master' "$workdir/box0.err" | head -n 2 | show || true

printf '\n== the flows ==\n'
for pid in "${session_pids[@]}" "$download_pid"; do
    wait "$pid" 2>/dev/null || true
done
for i in 1 2 3; do
    rc=0
    grep -q '^ok' "$workdir/session$i.out" || rc=1
    result "$rc" "interactive session $i through the VIP: $(cat "$workdir/session$i.out" "$workdir/session$i.err" | head -n 1)"
done
rc=0
grep -q '^ok' "$workdir/session-pat.out" || rc=1
result "$rc" "h2's session out through PAT: $(cat "$workdir/session-pat.out" "$workdir/session-pat.err" | head -n 1)"
rc=0
want=$(stat -c %s "$workdir/www/big.bin")
got=$(stat -c %s "$workdir/download.bin" 2>/dev/null || echo 0)
if [[ $got == "$want" ]] && cmp -s "$workdir/www/big.bin" "$workdir/download.bin"; then
    result 0 "download through the VIP complete and intact across both failovers: $(cat "$workdir/download.out")"
else
    result 1 "download: $got of $want bytes $(cat "$workdir/download.err")"
fi

printf '\n== vipgate ha on both boxes ==\n'
for i in 0 1; do
    "$vipgate" ha --socket "$workdir/box$i.sock" 2>&1 | show || true
done

if ((keep)); then
    cat <<EOF

== the lab stays up until Ctrl-C; try ==
  $vipgate ha --socket $workdir/box0.sock      # box a; box1.sock for box b
  $vipgate standby --socket $workdir/box0.sock # hand over to box b at once
  ip netns exec $(n client) curl -o /dev/null http://$VIP/big.bin
  tail -f $workdir/box0.err $workdir/box1.err
EOF
    trap ':' INT
    vg_spawn "$(n rtr)" /dev/null /dev/null sleep 86400
    wait "$VG_LAST_PID" || true
    vg_stop "$VG_LAST_PID" 1 || true
    trap 'exit 130' INT
fi

printf '\n%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
