//! High-availability system tests: two gateway boxes (vipgate, or vipgate and keepalived) on
//! shared segments, in namespaces each test creates and always removes
//! (vipgate_netns::pair). Root only: where that is missing each test says `SKIP:` loudly and
//! returns. Everything waits by polling with generous deadlines; nothing asserts on timings.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;

use vipgate_netns::pair::{addr, BoxKind, Pair, PairSpec};
use vipgate_netns::topology::addr::{INET, VIP};
use vipgate_netns::{poll_until, probe, require_root_and_netns, XdpMode};

/// Waits for anything that should happen: generous, since parallel tests share few cores.
const DEADLINE: Duration = Duration::from_secs(30);

/// Box `i`'s vipgate configuration: its own addresses, the shared VIP and private gateway,
/// DNAT of tcp 80 and udp 5353 to h1, PAT of the private network, and `ha` on the public
/// side with `ha_extra` appended to the `[ha]` section.
fn vipgate_body(i: usize, priority: u8, ha_extra: &str) -> String {
    format!(
        r#"
[[interfaces]]
name = "vg-pub"
side = "public"
address = "{public}/24"
gateway = "203.0.113.254"

[[interfaces]]
name = "vg-priv"
side = "private"
address = "{private}/24"
virtual_addresses = ["198.18.0.1"]

[nat]
vips = ["203.0.113.10"]
capacity = 65536

[[nat.dnat]]
vip = "203.0.113.10"
proto = "tcp"
port = 80
to = "198.18.0.10"

[[nat.dnat]]
vip = "203.0.113.10"
proto = "udp"
port = 5353
to = "198.18.0.10"

[[nat.pat]]
from = ["198.18.0.0/24"]
to = ["203.0.113.10"]

[log]
level = "info"

[ha]
vrid = 51
priority = {priority}
interface = "vg-pub"
advert_interval_ms = 100
{ha_extra}
"#,
        public = addr::PUBLIC[i],
        private = addr::PRIVATE[i],
    )
}

/// keepalived as box `i`: one VRRPv3 instance on vg-pub, VRID 51, the VIP.
fn keepalived_conf(priority: u8) -> String {
    format!(
        r#"
global_defs {{
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance vg {{
    state BACKUP
    interface vg-pub
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        203.0.113.10/24
    }}
}}
"#
    )
}

fn pair(boxes: [BoxKind; 2]) -> Option<Pair> {
    if !require_root_and_netns() {
        return None;
    }
    let spec = PairSpec {
        binary: env!("CARGO_BIN_EXE_vipgate").into(),
        mode: XdpMode::Skb,
        boxes,
    };
    Some(Pair::build(spec).unwrap_or_else(|e| panic!("pair topology: {e}")))
}

/// `vipgate ha --json` on box `i`.
fn ha(p: &Pair, i: usize) -> serde_json::Value {
    let out = std::process::Command::new(p.binary())
        .args(["ha", "--json", "--socket"])
        .arg(p.control_socket(i))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vipgate ha on box {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn role(p: &Pair, i: usize) -> String {
    ha(p, i)["role"].as_str().unwrap_or("?").to_string()
}

/// Waits until box `i` has role `want`.
fn wait_role(p: &Pair, i: usize, want: &str) {
    let r = poll_until(DEADLINE, &format!("box {i} {want}"), || role(p, i) == want);
    if let Err(e) = r {
        panic!("{e}: box {i} is {}; {}", role(p, i), ha(p, i));
    }
}

/// Runs `body`, printing both boxes' logs if it fails.
fn with_logs(p: &Pair, body: impl FnOnce()) {
    if let Err(e) = catch_unwind(AssertUnwindSafe(body)) {
        eprintln!("box a log:\n{}\nbox b log:\n{}", p.log(0), p.log(1));
        resume_unwind(e);
    }
}

/// One ping from `n` to `dst` answered, within the deadline.
fn wait_ping(n: &vipgate_netns::Netns, dst: std::net::Ipv4Addr) {
    let r = poll_until(DEADLINE, &format!("ping {dst}"), || {
        matches!(
            n.run(move || probe::ping(dst, 1, Duration::from_millis(300))),
            Ok(Ok(1))
        )
    });
    r.unwrap();
}

#[test]
fn two_boxes_elect_the_higher_priority_and_fail_over_both_ways() {
    let Some(mut p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "")),
        BoxKind::Vipgate(vipgate_body(1, 100, "")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        let a = ha(&p, 0);
        assert_eq!(a["active"], true, "{a}");
        assert_eq!(ha(&p, 1)["active"], false);
        poll_until(DEADLINE, "box b hears box a", || {
            ha(&p, 1)["peer"]["address"] == addr::PUBLIC[0].to_string()
        })
        .unwrap();
        assert_eq!(ha(&p, 1)["peer"]["priority"], 200);
        // The VIP and the hosts' virtual gateway answer, through box a.
        wait_ping(&p.client, VIP);
        wait_ping(&p.h1, addr::PRIVATE_VIRTUAL);
        wait_ping(&p.h1, INET);
    });
    // A crash: box b takes over within its master-down interval and answers for both.
    let log_a = p.kill(0).unwrap();
    with_logs(&p, || {
        wait_role(&p, 1, "master");
        let b = ha(&p, 1);
        assert_eq!(b["active"], true);
        assert!(
            b["last_transition"]["reason"]
                .as_str()
                .unwrap()
                .contains("no advert from the master"),
            "{b}"
        );
        wait_ping(&p.client, VIP);
        wait_ping(&p.h1, INET);
        assert!(!log_a.is_empty());
    });
    // Box a comes back with the higher priority and preempts (the default).
    p.start(0).unwrap();
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        wait_ping(&p.client, VIP);
        wait_ping(&p.h1, INET);
    });
    // A graceful stop hands over at once with a priority-0 advert.
    let exit = p.stop(0).unwrap();
    with_logs(&p, || {
        assert!(exit.counters.value("ha_adverts_tx").unwrap() > 0);
        wait_role(&p, 1, "master");
        let b = ha(&p, 1);
        assert!(
            b["last_transition"]["reason"]
                .as_str()
                .unwrap()
                .contains("priority 0"),
            "{b}"
        );
        wait_ping(&p.client, VIP);
    });
}

#[test]
fn without_preemption_a_returning_box_stays_backup() {
    let Some(mut p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "preempt = false")),
        BoxKind::Vipgate(vipgate_body(1, 100, "preempt = false")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        // Both start as backups; whoever times out first is master and stays.
        poll_until(DEADLINE, "one master", || {
            [role(&p, 0), role(&p, 1)]
                .iter()
                .filter(|r| *r == "master")
                .count()
                == 1
        })
        .unwrap();
    });
    let master = usize::from(role(&p, 1) == "master");
    p.kill(master).unwrap();
    with_logs(&p, || wait_role(&p, 1 - master, "master"));
    p.start(master).unwrap();
    with_logs(&p, || {
        wait_role(&p, master, "backup");
        // It has heard the master and stays backup for several master-down intervals.
        poll_until(DEADLINE, "an advert heard", || {
            ha(&p, master)["counters"]["ha_adverts_rx"].as_u64() > Some(20)
        })
        .unwrap();
        assert_eq!(role(&p, master), "backup");
        assert_eq!(role(&p, 1 - master), "master");
    });
}

#[test]
fn an_operator_hands_over_with_standby_and_takes_back_with_active() {
    let Some(p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "")),
        BoxKind::Vipgate(vipgate_body(1, 100, "")),
    ]) else {
        return;
    };
    let cli = |i: usize, cmd: &str| {
        let out = std::process::Command::new(p.binary())
            .args([cmd, "--socket"])
            .arg(p.control_socket(i))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        cli(0, "standby");
        assert_eq!(role(&p, 0), "left");
        assert_eq!(ha(&p, 0)["active"], false);
        wait_role(&p, 1, "master");
        wait_ping(&p.client, VIP);
        cli(0, "active");
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        wait_ping(&p.client, VIP);
    });
}

#[test]
fn a_partition_makes_two_masters_and_healing_leaves_one() {
    let Some(p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "")),
        BoxKind::Vipgate(vipgate_body(1, 100, "")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        p.set_public_port(1, false).unwrap();
        wait_role(&p, 1, "master");
        assert_eq!(role(&p, 0), "master", "split brain while partitioned");
        p.set_public_port(1, true).unwrap();
        wait_role(&p, 1, "backup");
        assert_eq!(role(&p, 0), "master");
        assert!(ha(&p, 1)["last_transition"]["reason"]
            .as_str()
            .unwrap()
            .contains("higher priority"));
        wait_ping(&p.client, VIP);
    });
}

#[test]
fn a_data_link_down_lowers_the_priority_and_hands_over() {
    let Some(p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "")),
        BoxKind::Vipgate(vipgate_body(1, 180, "")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        // Box a's private link goes down: 200 - 50 < 180, box b preempts.
        let n = &p.boxes[0];
        n.exec(&["ip", "link", "set", "vg-priv", "down"]).unwrap();
        wait_role(&p, 1, "master");
        let a = ha(&p, 0);
        assert_eq!(a["priority"], 150, "{a}");
        assert_eq!(a["links_down"][0], "vg-priv");
        wait_role(&p, 0, "backup");
        wait_ping(&p.h1, INET);
        n.exec(&["ip", "link", "set", "vg-priv", "up"]).unwrap();
        wait_role(&p, 0, "master");
    });
}

#[test]
fn vipgate_and_keepalived_elect_the_same_master_both_ways_round() {
    if std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_err()
    {
        if require_root_and_netns() {
            panic!("keepalived is not installed: the README's test command installs it");
        }
        return;
    }
    for (vipgate_priority, keepalived_priority) in [(200, 100), (100, 200)] {
        let Some(p) = pair([
            BoxKind::Vipgate(vipgate_body(0, vipgate_priority, "")),
            BoxKind::Keepalived(keepalived_conf(keepalived_priority)),
        ]) else {
            return;
        };
        with_logs(&p, || {
            let vipgate_wins = vipgate_priority > keepalived_priority;
            wait_role(&p, 0, if vipgate_wins { "master" } else { "backup" });
            poll_until(DEADLINE, "keepalived's role", || {
                p.kernel_holds_vip(1).unwrap() != vipgate_wins
            })
            .unwrap();
            // Both see the other's adverts and agree for a while.
            poll_until(DEADLINE, "adverts heard", || {
                ha(&p, 0)["counters"]["ha_adverts_rx"].as_u64() > Some(20) || vipgate_wins
            })
            .unwrap();
            let a = ha(&p, 0);
            assert_eq!(a["active"], vipgate_wins, "{a}");
            assert_eq!(p.kernel_holds_vip(1).unwrap(), !vipgate_wins);
            if vipgate_wins {
                let log = p.log(1);
                assert!(log.contains("Entering BACKUP STATE"), "{log}");
            } else {
                assert_eq!(a["peer"]["address"], addr::PUBLIC[1].to_string(), "{a}");
                assert_eq!(a["peer"]["priority"], keepalived_priority);
            }
            assert_eq!(a["counters"]["advert_bad_checksum"], 0, "{a}");
            wait_ping(&p.client, VIP);
        });
    }
}
