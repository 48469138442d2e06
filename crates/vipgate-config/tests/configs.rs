//! The shipped configurations, the refused ones under `configs/bad/`, and environment
//! overrides.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use vipgate_config::{
    Config, ConfigError, Control, Events, LogFormat, Metrics, Neighbors, Route, XdpMode,
};
use vipgate_nat::policy::{Backend, DnatRule, Filtering, Ipv4Net, NatConfig, PatRule, Policy};
use vipgate_nat::{Engine, Proto, Side, Timeouts};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn lab() -> PathBuf {
    configs_dir().join("lab.toml")
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn net(s: &str) -> Ipv4Net {
    let (a, len) = s.split_once('/').unwrap();
    Ipv4Net::new(a.parse().unwrap(), len.parse().unwrap()).unwrap()
}

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

#[test]
fn every_shipped_config_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = Config::load_with_env(&path, no_env())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // What the engine would refuse, the loader must have refused first.
            Policy::new(&c.nat).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "lab.toml and example.toml at least, found {seen}"
    );
}

#[test]
fn lab_is_the_lab_topology() {
    let c = Config::load_with_env(&lab(), no_env()).unwrap();
    assert_eq!(c.workers, vec![0]);
    assert_eq!(c.xdp.mode, XdpMode::Skb);
    assert_eq!(c.interfaces.len(), 2);
    let (public, private) = (&c.interfaces[0], &c.interfaces[1]);
    assert_eq!(public.name, "vg-pub");
    assert_eq!(public.side, Side::Public);
    assert_eq!(public.addr, Ipv4Addr::new(203, 0, 113, 1));
    assert_eq!(public.net, net("203.0.113.0/24"));
    assert_eq!(public.gateway, Some(Ipv4Addr::new(203, 0, 113, 254)));
    assert!(public.routes.is_empty());
    assert_eq!(private.name, "vg-priv");
    assert_eq!(private.side, Side::Private);
    assert_eq!(private.addr, Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(private.net, net("198.18.0.0/24"));
    assert_eq!(private.gateway, None);

    let nat = &c.nat;
    assert_eq!(nat.vips, vec![VIP]);
    assert_eq!(nat.capacity, 65536);
    assert_eq!(nat.workers, 1);
    assert_eq!(
        nat.dnat,
        vec![
            DnatRule {
                vip: VIP,
                proto: Proto::Tcp,
                port_lo: 80,
                port_hi: 80,
                to: H1,
                to_port: Some(80),
            },
            DnatRule {
                vip: VIP,
                proto: Proto::Udp,
                port_lo: 5353,
                port_hi: 5353,
                to: H1,
                to_port: Some(5353),
            },
        ]
    );
    assert_eq!(nat.pools.len(), 1);
    let web = &nat.pools[0];
    assert_eq!(
        (web.name.as_str(), web.vip, web.proto, web.port),
        ("web", VIP, Proto::Tcp, 8080)
    );
    assert_eq!(
        web.backends,
        vec![
            Backend {
                addr: H1,
                port: 8080,
                weight: 1
            },
            Backend {
                addr: H2,
                port: 8080,
                weight: 1
            },
        ]
    );
    assert_eq!(
        nat.pat,
        vec![PatRule {
            from: vec![net("198.18.0.0/24")],
            to: vec![VIP],
        }]
    );
    // Ready for the engine as it is.
    let engine = Engine::new(c.nat.clone()).unwrap();
    assert_eq!(engine.config().workers, 1);
}

#[test]
fn example_is_what_its_comments_say() {
    let c = Config::load_with_env(&configs_dir().join("example.toml"), no_env()).unwrap();
    assert_eq!(c.workers, vec![2, 3, 4, 5]);
    assert_eq!(c.nat.workers, 4);
    assert_eq!(c.xdp.mode, XdpMode::Drv);
    assert_eq!(c.xdp.frames, 8192);
    assert_eq!(
        c.interfaces[1].routes,
        vec![Route {
            net: net("10.30.0.0/16"),
            via: Ipv4Addr::new(10, 20, 0, 254),
        }]
    );
    let media = &c.nat.dnat[1];
    assert_eq!(
        (media.port_lo, media.port_hi, media.to_port),
        (50000, 50099, Some(40000))
    );
    assert_eq!(c.nat.pools[0].backends[2].weight, 2);
    assert_eq!(
        c.nat.pools[0].when_empty,
        vipgate_nat::policy::EmptyPool::Reject
    );
    assert_eq!(
        c.nat.pat[0].from,
        vec![net("10.20.0.0/24"), net("10.30.0.0/16")]
    );
    assert_eq!(c.neighbors.capacity, 4096);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.control, Control::default());
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9469".parse().unwrap()));
    assert_eq!(
        c.events,
        Events {
            file: Some(PathBuf::from("/var/log/vipgate/nat-events.log")),
            rate: 10_000,
            queue: 65_536,
        }
    );
    // A backend behind the private route is found through the route's interface.
    let (i, iface) = c.interface_for(Ipv4Addr::new(10, 20, 0, 10)).unwrap();
    assert_eq!((i, iface.name.as_str()), (1, "ens1f1"));
    assert!(c.interface_for(Ipv4Addr::new(10, 30, 2, 10)).is_none());
    assert_eq!(c.interfaces[1].virtual_addrs, [Ipv4Addr::new(10, 20, 0, 1)]);
    let ha = c.ha.unwrap();
    assert_eq!((ha.vrid, ha.priority, ha.interface), (51, 150, 0));
    assert_eq!((ha.advert_interval_ms, ha.garp_count), (100, 5));
    assert!(ha.preempt && ha.peers.is_empty());
    let sync = ha.sync.unwrap();
    assert_eq!(sync.interface, "ens2");
    assert_eq!(sync.peer, "198.18.9.2:7789".parse().unwrap());
    assert_eq!(
        sync.key,
        vipgate_config::SyncKeySource::File("/etc/vipgate/sync.key".into())
    );
    assert_eq!(
        (sync.heartbeat_ms, sync.dead_ms, sync.refresh_secs),
        (100, 1000, 30)
    );
}

#[test]
fn omitted_sections_take_their_defaults() {
    let text = r#"
        [workers]
        cores = [1]
        [[interfaces]]
        name = "a"
        side = "public"
        address = "203.0.113.1/24"
        [[interfaces]]
        name = "b"
        side = "private"
        address = "198.18.0.1/24"
        [nat]
        vips = ["203.0.113.10"]
    "#;
    let c = Config::from_toml_str(text, no_env()).unwrap();
    assert_eq!(c.xdp, vipgate_config::Xdp::default());
    assert_eq!(
        (c.xdp.batch, c.xdp.frames, c.xdp.frame_size, c.xdp.ring),
        (64, 4096, 2048, 1024)
    );
    assert_eq!(c.neighbors, Neighbors::default());
    assert_eq!(c.icmp.rate, 100);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.control, Control::default());
    assert_eq!(c.control.socket, PathBuf::from("/run/vipgate/vipgate.sock"));
    assert_eq!(c.metrics, Metrics { listen: None });
    assert_eq!(c.events, Events::default());
    assert_eq!(
        (c.events.file.as_deref(), c.events.rate, c.events.queue),
        (None, 10_000, 65_536)
    );
    let d = NatConfig::default();
    assert_eq!(c.nat.timeouts, Timeouts::default());
    assert_eq!(c.nat.capacity, d.capacity);
    assert_eq!((c.nat.port_lo, c.nat.port_hi), (d.port_lo, d.port_hi));
    assert_eq!(c.nat.filtering, Filtering::AddressAndPortDependent);
    assert_eq!(
        (c.nat.frag_entries, c.nat.frag_timeout, c.nat.frag_hold),
        (d.frag_entries, d.frag_timeout, d.frag_hold)
    );
    assert!(c.nat.dnat.is_empty() && c.nat.pools.is_empty() && c.nat.pat.is_empty());
}

const MINIMAL: &str = r#"
    [workers]
    cores = [1]
    [[interfaces]]
    name = "a"
    side = "public"
    address = "203.0.113.1/24"
    [[interfaces]]
    name = "b"
    side = "private"
    address = "198.18.0.1/24"
    [nat]
    vips = ["203.0.113.10"]
"#;

fn minimal_with(extra: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(&format!("{MINIMAL}\n{extra}"), no_env())
}

#[test]
fn control_metrics_events_and_log_format_are_read() {
    let c = minimal_with(
        r#"
        [control]
        socket = "/run/vg/ctl.sock"
        [metrics]
        listen = "[::1]:9469"
        [events]
        file = "/var/log/vipgate/nat-events.log"
        rate = 1
        queue = 64
        [log]
        format = "json"
        "#,
    )
    .unwrap();
    assert_eq!(c.control.socket, PathBuf::from("/run/vg/ctl.sock"));
    assert_eq!(c.metrics.listen, Some("[::1]:9469".parse().unwrap()));
    assert_eq!(
        c.events.file.as_deref(),
        Some(Path::new("/var/log/vipgate/nat-events.log"))
    );
    assert_eq!((c.events.rate, c.events.queue), (1, 64));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "info");
    let c = minimal_with(
        "[metrics]\nlisten = \"127.0.0.1:65535\"\n[events]\nrate = 10000000\nqueue = 16777216",
    )
    .unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:65535".parse().unwrap()));
    assert_eq!((c.events.rate, c.events.queue), (10_000_000, 16_777_216));
    // An empty [metrics] is metrics off, not an error.
    assert_eq!(minimal_with("[metrics]").unwrap().metrics.listen, None);
}

#[test]
fn log_levels_are_tracing_filters() {
    for good in [
        "info",
        "INFO",
        "Debug",
        "off",
        "trace",
        "warn,vipgate=debug",
        "info,vipgate_dataplane=trace,vipgate::daemon=off",
        "my-crate=error",
        " info , vipgate=warn ",
    ] {
        let c = minimal_with(&format!("[log]\nlevel = {good:?}"))
            .unwrap_or_else(|e| panic!("{good:?}: {e}"));
        assert_eq!(c.log.level, good);
    }
    for (bad, item) in [
        ("infoo", "infoo"),
        ("verbose", "verbose"),
        ("3", "3"),
        ("info,", ""),
        ("info,,debug", ""),
        ("vipgate=", "vipgate="),
        ("=debug", "=debug"),
        ("vipgate=loud", "vipgate=loud"),
        ("vip gate=info", "vip gate=info"),
        ("vipgate[span]=info", "vipgate[span]=info"),
        ("info,a=b=c", "a=b=c"),
    ] {
        let msg = minimal_with(&format!("[log]\nlevel = {bad:?}"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with(&format!("log.level: {bad:?} ")), "{msg}");
        assert!(msg.contains(&format!("{item:?}")), "{bad:?}: {msg}");
        assert!(
            msg.contains("trace, debug, info, warn, error, off"),
            "{bad:?}: {msg}"
        );
    }
}

fn problems_of(text: &str) -> Vec<String> {
    let e = Config::from_toml_str(text, no_env()).unwrap_err();
    assert_eq!(e.to_string().lines().count(), e.problems().len());
    e.problems().iter().map(ToString::to_string).collect()
}

const TWO_INTERFACES: &str = r#"
    [workers]
    cores = [1]
    [[interfaces]]
    name = "a"
    side = "public"
    address = "203.0.113.1/24"
    [[interfaces]]
    name = "b"
    side = "private"
    address = "198.18.0.1/24"
"#;

#[test]
fn every_item_of_a_list_is_checked() {
    let text = format!(
        r#"{TWO_INTERFACES}
        [nat]
        vips = ["203.0.113.10"]
        [[nat.dnat]]
        vip = "203.0.113.10"
        proto = "sctp"
        port = 80
        to = "198.18.0.10"
        [[nat.dnat]]
        vip = "203.0.113.10"
        proto = "tcp"
        port = 81
        to = "198.18.0.10"
        [[nat.dnat]]
        vip = "203.0.113.10"
        proto = "tcp"
        port = 0
        to = "198.18.0.10"
        [[nat.pools]]
        name = "web"
        vip = "203.0.113.10"
        proto = "tcp"
        port = 8080
        backends = [{{ addr = "203.0.113.50", port = 80 }}]
        [[nat.pools]]
        name = ""
        vip = "203.0.113.10"
        proto = "tcp"
        port = 8081
        backends = [{{ addr = "198.18.0.10", port = 80 }}]
        [[nat.pat]]
        from = ["10.0.0.0/8"]
        to = ["203.0.113.10"]
        [[nat.pat]]
        from = ["198.18.0.0/24"]
        to = ["203.0.113.10", "203.0.113.10"]
        "#
    );
    let keys: Vec<String> = problems_of(&text)
        .iter()
        .map(|l| l.split(": ").next().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "nat.dnat[0].proto",
            "nat.dnat[2].port",
            "nat.pools[0].backends[0].addr",
            "nat.pools[1].name",
            "nat.pat[0].from[0]",
            "nat.pat[1].to[1]",
        ]
    );

    let text = r#"
        [workers]
        cores = [1]
        [[interfaces]]
        name = "a/b"
        side = "public"
        address = "203.0.113.1/24"
        [[interfaces]]
        name = "b"
        side = "inside"
        address = "198.18.0.1/24"
        [[interfaces]]
        name = "c"
        side = "private"
        address = "198.18.0.1/33"
        [xdp]
        frames = 8192
        [nat]
        vips = ["203.0.113.10"]
    "#;
    let keys: Vec<String> = problems_of(text)
        .iter()
        .map(|l| l.split(": ").next().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "interfaces[0].name",
            "interfaces[1].side",
            "interfaces[2].address"
        ]
    );
}

#[test]
fn checks_that_need_a_refused_value_are_skipped() {
    // The interfaces are refused: the NAT section's addresses can't be placed, so they are
    // not reported, but its own values still are.
    let text = r#"
        [workers]
        cores = [1]
        [[interfaces]]
        name = "a"
        side = "public"
        address = "203.0.113.1/33"
        [[interfaces]]
        name = "b"
        side = "private"
        address = "198.18.0.1/24"
        [nat]
        vips = ["203.0.113.10"]
        capacity = 0
        [[nat.dnat]]
        vip = "203.0.113.10"
        proto = "tcp"
        port = 80
        to = "198.18.0.10"
    "#;
    let problems = problems_of(text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("interfaces[0].address: "));
    assert!(problems[1].starts_with("nat.capacity: "));

    // A refused VIP: rules naming VIPs are not checked against a list without it.
    let text = format!(
        r#"{TWO_INTERFACES}
        [nat]
        vips = ["203.0.113.300", "203.0.113.10"]
        [[nat.dnat]]
        vip = "203.0.113.10"
        proto = "tcp"
        port = 80
        to = "198.18.0.10"
        [[nat.pat]]
        from = ["198.18.0.0/24"]
        to = ["198.18.0.5"]
        "#
    );
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("nat.vips[0]: "));
    assert!(problems[1].starts_with("nat.pat[0].to[0]: "));

    // A repeat names the index in the file, refused items counted.
    let text = format!(
        r#"{TWO_INTERFACES}
        [nat]
        vips = ["x", "203.0.113.10", "203.0.113.10"]
        "#
    );
    assert_eq!(
        problems_of(&text),
        [
            "nat.vips[0]: \"x\" is not an IPv4 address; expected a.b.c.d",
            "nat.vips[2]: 203.0.113.10 repeats nat.vips[1]; expected each VIP once",
        ]
    );

    // Refused workers: the PAT port shares are not checked; a refused ring size: the UMEM
    // size is checked for being a power of two only.
    let text = format!(
        r#"{TWO_INTERFACES}
        [xdp]
        ring = 100
        frames = 64
        [nat]
        vips = ["203.0.113.10"]
        pat_ports = "2000-2000"
        "#
    )
    .replace("cores = [1]", "cores = [1, 1]");
    let keys: Vec<String> = problems_of(&text)
        .iter()
        .map(|l| l.split(": ").next().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["workers.cores[1]", "xdp.ring"]);
    let text = TWO_INTERFACES.to_string()
        + "[xdp]\nring = 100\nframes = 3\n[nat]\nvips = [\"203.0.113.10\"]";
    assert_eq!(
        problems_of(&text)[1],
        "xdp.frames: 3 is out of range; expected a power of two up to 1048576"
    );
}

/// The lab with `old` replaced by `new` in its text (which must occur) and `env` on top.
fn lab_edited(old: &str, new: &str, env_pairs: &[(&str, &str)]) -> Config {
    let text = std::fs::read_to_string(lab()).unwrap();
    assert!(text.contains(old), "lab.toml has no {old:?}");
    Config::from_toml_str(&text.replacen(old, new, 1), env(env_pairs))
        .unwrap_or_else(|e| panic!("{old:?} -> {new:?}: {e}"))
}

#[test]
fn reload_classifies_policy_changes() {
    let running = Config::load_with_env(&lab(), no_env()).unwrap();
    assert_eq!(running.structural_change(&running.clone()), None);
    for (var, value) in [
        ("VIPGATE_NAT__TIMEOUTS__UDP", "120"),
        ("VIPGATE_NAT__TIMEOUTS__MAPPING", "5"),
        ("VIPGATE_NAT__TIMEOUTS__TCP_ESTABLISHED", "8000"),
        ("VIPGATE_NAT__FILTERING", "endpoint-independent"),
        ("VIPGATE_ICMP__RATE", "0"),
    ] {
        let new = Config::load_with_env(&lab(), env(&[(var, value)])).unwrap();
        assert_ne!(new, running, "{var}");
        assert_eq!(running.structural_change(&new), None, "{var}={value}");
    }
    // Rules, pools and PAT, and the VIPs they use.
    let policy_edits = [
        ("port = 80\n", "port = 81\n"),
        ("{ addr = \"198.18.0.11\", port = 8080 },", ""),
        ("name = \"web\"", "name = \"www\""),
        ("from = [\"198.18.0.0/24\"]", "from = [\"198.18.0.0/25\"]"),
    ];
    for (old, new) in policy_edits {
        let edited = lab_edited(old, new, &[]);
        assert_ne!(edited, running, "{old:?}");
        assert_eq!(
            running.structural_change(&edited),
            None,
            "{old:?} -> {new:?}"
        );
    }
    let more_vips = lab_edited(
        "vips = [\"203.0.113.10\"]",
        "vips = [\"203.0.113.10\", \"203.0.113.11\"]",
        &[],
    );
    assert_eq!(running.structural_change(&more_vips), None);
}

#[test]
fn reload_names_the_first_structural_change() {
    let running = Config::load_with_env(&lab(), no_env()).unwrap();
    for (var, value, key) in [
        ("VIPGATE_XDP__MODE", "drv", "xdp.mode"),
        ("VIPGATE_XDP__BATCH", "32", "xdp.batch"),
        ("VIPGATE_XDP__FRAMES", "8192", "xdp.frames"),
        ("VIPGATE_XDP__FRAME_SIZE", "4096", "xdp.frame_size"),
        ("VIPGATE_XDP__RING", "512", "xdp.ring"),
        ("VIPGATE_NAT__CAPACITY", "4096", "nat.capacity"),
        ("VIPGATE_NAT__PAT_PORTS", "2000-3000", "nat.pat_ports"),
        ("VIPGATE_NAT__FRAG_ENTRIES", "64", "nat.frag_entries"),
        ("VIPGATE_NAT__FRAG_TIMEOUT", "5", "nat.frag_timeout"),
        ("VIPGATE_NAT__FRAG_HOLD", "0", "nat.frag_hold"),
        ("VIPGATE_NEIGHBORS__CAPACITY", "64", "neighbors.capacity"),
        ("VIPGATE_NEIGHBORS__REACHABLE", "60", "neighbors.reachable"),
        ("VIPGATE_NEIGHBORS__RETRY_MS", "100", "neighbors.retry_ms"),
        ("VIPGATE_NEIGHBORS__RETRIES", "5", "neighbors.retries"),
        ("VIPGATE_NEIGHBORS__HOLD", "8", "neighbors.hold"),
        ("VIPGATE_CONTROL__SOCKET", "/run/vg.sock", "control.socket"),
        (
            "VIPGATE_METRICS__LISTEN",
            "127.0.0.1:9469",
            "metrics.listen",
        ),
        ("VIPGATE_EVENTS__FILE", "/var/log/vg.log", "events.file"),
        ("VIPGATE_EVENTS__RATE", "5", "events.rate"),
        ("VIPGATE_EVENTS__QUEUE", "128", "events.queue"),
        ("VIPGATE_LOG__LEVEL", "debug", "log.level"),
        ("VIPGATE_LOG__FORMAT", "json", "log.format"),
    ] {
        let new = Config::load_with_env(&lab(), env(&[(var, value)])).unwrap();
        assert_eq!(
            running.structural_change(&new).as_deref(),
            Some(key),
            "{var}={value}"
        );
        // Either way round.
        assert_eq!(
            new.structural_change(&running).as_deref(),
            Some(key),
            "{var}={value}"
        );
    }
    for (old, new, key) in [
        ("cores = [0]", "cores = [1]", "workers.cores"),
        ("name = \"vg-priv\"", "name = \"vg-lan\"", "interfaces[1].name"),
        (
            "address = \"198.18.0.1/24\"",
            "address = \"198.18.0.2/24\"",
            "interfaces[1].address",
        ),
        (
            "gateway = \"203.0.113.254\"",
            "gateway = \"203.0.113.253\"",
            "interfaces[0].gateway",
        ),
        (
            "gateway = \"203.0.113.254\"",
            "gateway = \"203.0.113.254\"\nroutes = [{ prefix = \"198.51.100.0/24\", via = \"203.0.113.253\" }]",
            "interfaces[0].routes",
        ),
    ] {
        let edited = lab_edited(old, new, &[]);
        assert_eq!(
            running.structural_change(&edited).as_deref(),
            Some(key),
            "{old:?} -> {new:?}"
        );
    }
    let three = lab_edited(
        "[nat]",
        "[[interfaces]]\nname = \"vg-mgmt\"\nside = \"private\"\naddress = \"10.9.0.1/24\"\n\n[nat]",
        &[("VIPGATE_XDP__FRAMES", "8192")],
    );
    // The first difference in file order: xdp.frames comes before interfaces.
    assert_eq!(
        running.structural_change(&three).as_deref(),
        Some("xdp.frames")
    );
    let same_frames =
        Config::load_with_env(&lab(), env(&[("VIPGATE_XDP__FRAMES", "8192")])).unwrap();
    assert_eq!(
        same_frames.structural_change(&three).as_deref(),
        Some("interfaces")
    );
    // A policy change alongside a structural one does not hide it.
    let both = lab_edited(
        "port = 80\n",
        "port = 81\n",
        &[("VIPGATE_LOG__LEVEL", "warn")],
    );
    assert_eq!(
        running.structural_change(&both).as_deref(),
        Some("log.level")
    );
}

/// The refused configurations: `configs/bad/NAME.toml`, each starting with one
/// `# expect: <text the line must contain>` line per problem it must report, in order. The
/// expected text starts with the key path whenever the problem has one, so each row checks
/// the key too.
fn bad_configs() -> Vec<(PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(configs_dir().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect: Vec<String> = text
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .map(str::to_string)
            .collect();
        assert!(
            !expect.is_empty(),
            "{}: first line must be `# expect: ...`",
            path.display()
        );
        out.push((path, expect));
    }
    out.sort();
    out
}

#[test]
fn every_bad_config_is_refused_with_its_message() {
    let bad = bad_configs();
    assert!(bad.len() >= 25, "only {} bad configurations", bad.len());
    for (path, expect) in &bad {
        let name = path.file_name().unwrap().to_string_lossy();
        let e: ConfigError = match Config::load_with_env(path, no_env()) {
            Ok(_) => panic!("{name}: accepted, expected an error containing {expect:?}"),
            Err(e) => e,
        };
        let msg = e.to_string();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(
            lines.len(),
            expect.len(),
            "{name}: {} problems expected, message {msg:?}",
            expect.len()
        );
        assert_eq!(e.problems().len(), expect.len(), "{name}");
        for ((line, expect), problem) in lines.iter().zip(expect).zip(e.problems()) {
            assert!(
                line.contains(expect.as_str()),
                "{name}:\n  message {line:?}\n  expected to contain {expect:?}"
            );
            assert_eq!(*line, problem.to_string(), "{name}");
            if !problem.key().is_empty() {
                assert!(
                    expect.starts_with(&format!("{}: ", problem.key())),
                    "{name}: expectation {expect:?} does not name the key {:?}",
                    problem.key()
                );
                assert!(
                    line.starts_with(&format!("{}: ", problem.key())),
                    "{name}: {line}"
                );
            }
            assert_eq!(problem.env_var(), None, "{name}");
        }
        assert_eq!(e.key(), e.problems()[0].key(), "{name}");
        assert_eq!(e.env_var(), None, "{name}");
    }
}

#[test]
fn bad_configs_cover_every_section() {
    let keys: Vec<String> = bad_configs().into_iter().flat_map(|(_, e)| e).collect();
    for prefix in [
        "workers.cores",
        "xdp.mode",
        "xdp.batch",
        "xdp.frames",
        "xdp.frame_size",
        "xdp.ring",
        "interfaces:",
        "interfaces[1].address",
        "interfaces[0].gateway",
        "interfaces[0].routes[0].via",
        "nat.vips[1]",
        "nat.capacity",
        "nat.pat_ports",
        "nat.timeouts.",
        "nat.dnat[0].to",
        "nat.dnat[1]: port",
        "nat.pools[0]: port",
        "nat.pools[0].backends[1].addr",
        "nat.pat[0].to[0]",
        "nat.pat[0].from[0]",
        "neighbors.",
        "icmp.rate",
        "log.level",
        "log.format",
        "control.socket",
        "metrics.listen",
        "events.file",
        "events.rate",
        "events.queue",
        "TOML syntax error",
    ] {
        assert!(
            keys.iter().any(|k| k.starts_with(prefix)),
            "no bad configuration for {prefix}"
        );
    }
}

/// The binary prints `vipgate: FILE: error`: an error that named the file itself would say it
/// twice.
#[test]
fn errors_never_name_the_file() {
    for (path, _) in bad_configs() {
        let msg = Config::load_with_env(&path, no_env())
            .unwrap_err()
            .to_string();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!msg.contains(&name), "{name}: {msg}");
        assert!(!msg.contains("(in "), "{name}: {msg}");
    }
    let path = configs_dir().join("bad/wrong-type.toml");
    let msg = Config::load_with_env(&path, no_env())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "nat.capacity: string \"lots\" has the wrong type; expected an integer"
    );
    let path = configs_dir().join("bad/toml-syntax.toml");
    let msg = Config::load_with_env(&path, no_env())
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("TOML syntax error at line "), "{msg}");
    assert!(
        msg.contains("name = \"vg-priv"),
        "the offending line is quoted: {msg}"
    );
    let missing = configs_dir().join("no-such-file.toml");
    let e = Config::load_with_env(&missing, no_env()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("cannot read the file: "), "{msg}");
    assert!(!msg.contains("no-such-file"), "{msg}");
}

#[test]
fn environment_overrides_nested_keys() {
    let c = Config::load_with_env(
        &lab(),
        env(&[
            ("VIPGATE_NAT__CAPACITY", "4096"),
            ("VIPGATE_XDP__MODE", "drv"),
            ("VIPGATE_XDP__BATCH", "32"),
            ("VIPGATE_NAT__TIMEOUTS__UDP", "120"),
            ("VIPGATE_NAT__FILTERING", "endpoint-independent"),
            ("VIPGATE_NAT__PAT_PORTS", "20000-29999"),
            ("VIPGATE_LOG__LEVEL", "vipgate=debug"),
            // Sections the file leaves out can be set too.
            ("VIPGATE_NEIGHBORS__HOLD", "8"),
            ("VIPGATE_ICMP__RATE", "0"),
            // Variables without the prefix are none of vipgate's business.
            ("PATH", "/usr/bin"),
            ("VIPGATEWAY", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.nat.capacity, 4096);
    assert_eq!(c.xdp.mode, XdpMode::Drv);
    assert_eq!(c.xdp.batch, 32);
    assert_eq!(c.nat.timeouts.udp, 120);
    assert_eq!(
        c.nat.timeouts.tcp_established,
        Timeouts::default().tcp_established
    );
    assert_eq!(c.nat.filtering, Filtering::EndpointIndependent);
    assert_eq!((c.nat.port_lo, c.nat.port_hi), (20000, 29999));
    assert_eq!(c.log.level, "vipgate=debug");
    assert_eq!(c.neighbors.hold, 8);
    assert_eq!(c.icmp.rate, 0);
    // The rest of the file is untouched.
    assert_eq!(c.nat.vips, vec![VIP]);
    assert_eq!(c.interfaces.len(), 2);
}

#[test]
fn environment_sets_lists_as_comma_separated_items() {
    let c = Config::load_with_env(
        &lab(),
        env(&[
            ("VIPGATE_WORKERS__CORES", "0,1"),
            ("VIPGATE_NAT__VIPS", "203.0.113.10,203.0.113.11"),
        ]),
    )
    .unwrap();
    assert_eq!(c.workers, vec![0, 1]);
    assert_eq!(c.nat.workers, 2);
    assert_eq!(c.nat.vips, vec![VIP, Ipv4Addr::new(203, 0, 113, 11)]);
    // One item is a list of one; spaces around items are left out.
    let c = Config::load_with_env(&lab(), env(&[("VIPGATE_WORKERS__CORES", "3")])).unwrap();
    assert_eq!(c.workers, vec![3]);
    let c = Config::load_with_env(&lab(), env(&[("vipgate_workers__cores", " 2, 3 ")])).unwrap();
    assert_eq!(c.workers, vec![2, 3]);
    // Commas in other values are not separators.
    let c = Config::load_with_env(&lab(), env(&[("VIPGATE_LOG__LEVEL", "info,vipgate=debug")]))
        .unwrap();
    assert_eq!(c.log.level, "info,vipgate=debug");

    for (var, value, expect) in [
        (
            "VIPGATE_WORKERS__CORES",
            "0,x",
            "workers.cores[1]: string \"x\" has the wrong type; expected an integer",
        ),
        (
            "VIPGATE_WORKERS__CORES",
            "0,0",
            "workers.cores[1]: 0 repeats workers.cores[0]; expected each CPU at most once",
        ),
        (
            "VIPGATE_WORKERS__CORES",
            "",
            "workers.cores: [] is empty; expected at least one CPU, e.g. [0]",
        ),
        (
            "VIPGATE_NAT__VIPS",
            "203.0.113.10,203.0.113",
            "nat.vips[1]: \"203.0.113\" is not an IPv4 address; expected a.b.c.d",
        ),
    ] {
        let e = Config::load_with_env(&lab(), env(&[(var, value)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{expect} (set by environment variable {var})"),
            "{var}={value}"
        );
        assert_eq!(e.env_var(), Some(var));
    }
}

#[test]
fn environment_cannot_set_lists_of_tables() {
    for (var, key) in [
        ("VIPGATE_INTERFACES", "interfaces"),
        ("VIPGATE_INTERFACES__0__NAME", "interfaces"),
        ("VIPGATE_NAT__DNAT", "nat.dnat"),
        ("VIPGATE_NAT__POOLS__BACKENDS", "nat.pools"),
        ("VIPGATE_NAT__PAT", "nat.pat"),
    ] {
        let e = Config::load_with_env(&lab(), env(&[(var, "x")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{key}: is a list of tables, which can only be set in the file; expected \
                 [[{key}]] entries in the file and no environment variable \
                 (set by environment variable {var})"
            )
        );
        assert_eq!((e.key(), e.env_var()), (key, Some(var)));
    }
    // Each is reported.
    let e = Config::load_with_env(
        &lab(),
        env(&[("VIPGATE_NAT__PAT", "x"), ("VIPGATE_INTERFACES", "y")]),
    )
    .unwrap_err();
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key()).collect();
    assert_eq!(keys, ["interfaces", "nat.pat"]);
    // A key that only starts like one is not one.
    let c = Config::load_with_env(&lab(), env(&[("VIPGATE_NAT__PAT_PORTS", "2000-3000")])).unwrap();
    assert_eq!((c.nat.port_lo, c.nat.port_hi), (2000, 3000));
}

#[test]
fn environment_variable_names_are_case_insensitive() {
    let c = Config::load_with_env(&lab(), env(&[("vipgate_nat__capacity", "2048")])).unwrap();
    assert_eq!(c.nat.capacity, 2048);
}

#[test]
fn bad_environment_values_name_the_key_and_the_variable() {
    let cases = [
        (
            "VIPGATE_XDP__MODE",
            "native",
            "xdp.mode: \"native\" is not an XDP mode; expected \"skb\" or \"drv\"",
        ),
        (
            "VIPGATE_NAT__CAPACITY",
            "0",
            "nat.capacity: 0 is out of range; expected 1 to 2147483648",
        ),
        (
            "VIPGATE_NAT__CAPACITY",
            "lots",
            "nat.capacity: string \"lots\" has the wrong type; expected an integer",
        ),
        (
            "VIPGATE_NAT__TIMEOUTS__TCP_CLOSE",
            "0",
            "nat.timeouts.tcp_close: 0 is out of range; expected at least 1",
        ),
        (
            "VIPGATE_NAT__CAPACTY",
            "5",
            "nat.capacty: unknown key; expected one of",
        ),
        ("VIPGATE_STATS", "on", "stats: unknown key; expected one of"),
        (
            "VIPGATE_METRICS",
            "on",
            "metrics: string \"on\" has the wrong type; expected a table",
        ),
        (
            "VIPGATE_NAT__PAT_PORTS",
            "1024",
            "nat.pat_ports: \"1024\" is not a port range",
        ),
    ];
    for (var, value, expect) in cases {
        let e = Config::load_with_env(&lab(), env(&[(var, value)])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(expect), "{var}={value}: {msg}");
        assert!(
            msg.ends_with(&format!("(set by environment variable {var})")),
            "{var}={value}: {msg}"
        );
        assert_eq!(e.env_var(), Some(var));
        assert!(!msg.contains('\n'));
    }
}

#[test]
fn from_str_reports_without_a_file() {
    let e = Config::from_toml_str("[workers]\ncores = \"all\"\n", no_env()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("workers.cores: "), "{msg}");
    assert!(!msg.contains("(in "), "{msg}");
}

#[test]
fn process_environment_is_read_by_load() {
    // Setting variables would race with other tests; with none set, load must agree with
    // load_with_env and an empty map.
    if std::env::vars_os().any(|(k, _)| {
        k.to_str()
            .is_some_and(|k| k.to_ascii_uppercase().starts_with("VIPGATE_"))
    }) {
        return;
    }
    assert_eq!(
        Config::load(&lab()).unwrap(),
        Config::load_with_env(&lab(), no_env()).unwrap()
    );
}

#[test]
fn when_empty_is_reject_or_drop() {
    let pool = |when: &str| {
        format!(
            "{MINIMAL}\n[[nat.pools]]\nname = \"p\"\nvip = \"203.0.113.10\"\nproto = \"tcp\"\nport = 80\nbackends = [{{ addr = \"198.18.0.10\", port = 80 }}]\n{when}"
        )
    };
    let c = Config::from_toml_str(&pool("when_empty = \"drop\""), no_env()).unwrap();
    assert_eq!(
        c.nat.pools[0].when_empty,
        vipgate_nat::policy::EmptyPool::Drop
    );
    let c = Config::from_toml_str(&pool(""), no_env()).unwrap();
    assert_eq!(
        c.nat.pools[0].when_empty,
        vipgate_nat::policy::EmptyPool::Reject
    );
    let c = Config::from_toml_str(&pool("persistence = \"source_address\""), no_env()).unwrap();
    assert_eq!(
        c.nat.pools[0].persistence,
        vipgate_nat::policy::Persistence::SourceAddress
    );
    assert!(problems_of(&pool("persistence = \"sticky\""))[0]
        .starts_with("nat.pools[0].persistence: \"sticky\" is not a choice"));
    let p = problems_of(&pool("when_empty = \"refuse\""));
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("nat.pools[0].when_empty: \"refuse\" is not a choice"),
        "{p:?}"
    );
}

#[test]
fn health_checks_are_read_per_pool_and_every_problem_named() {
    let pool = |check: &str| {
        format!(
            "{MINIMAL}\n[[nat.pools]]\nname = \"p\"\nvip = \"203.0.113.10\"\nproto = \"tcp\"\nport = 80\nbackends = [{{ addr = \"198.18.0.10\", port = 80 }}]\n{check}"
        )
    };
    let c = Config::from_toml_str(
        &pool("check = { type = \"http\", path = \"/up\", status = 204, body = \"ok\", interval_ms = 500, timeout_ms = 400, rise = 3, fall = 4 }"),
        no_env(),
    )
    .unwrap();
    let (name, check) = &c.checks[0];
    assert_eq!(name, "p");
    assert_eq!(
        check.kind,
        vipgate_config::CheckKind::Http {
            path: "/up".into(),
            status: 204,
            body: Some("ok".into())
        }
    );
    assert_eq!(
        (check.interval_ms, check.timeout_ms, check.rise, check.fall),
        (500, 400, 3, 4)
    );
    let c = Config::from_toml_str(&pool("check = { type = \"tcp\" }"), no_env()).unwrap();
    assert_eq!(c.checks[0].1.kind, vipgate_config::CheckKind::Tcp);
    assert_eq!(
        (
            c.checks[0].1.interval_ms,
            c.checks[0].1.rise,
            c.checks[0].1.fall
        ),
        (1000, 2, 3)
    );
    assert!(Config::from_toml_str(&pool(""), no_env())
        .unwrap()
        .checks
        .is_empty());
    let p = problems_of(&pool(
        "check = { type = \"tcp\", path = \"/\", interval_ms = 50, timeout_ms = 2000 }",
    ));
    let keys: Vec<&str> = p.iter().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        ["nat.pools[0].check.path", "nat.pools[0].check.interval_ms"],
        "{p:#?}"
    );
    assert!(problems_of(&pool("check = { type = \"udp\" }"))[0]
        .starts_with("nat.pools[0].check.type: \"udp\" is not a check"));
}

#[test]
fn source_checks_follow_the_interfaces() {
    let c = Config::load_with_env(&lab(), no_env()).unwrap();
    let check = &c.nat.source_check;
    assert!(check.public && check.private, "on by default");
    assert_eq!(check.inside, vec![(Ipv4Addr::new(198, 18, 0, 0), 24)]);
    // A route through the private side is inside too; the default route there lets any
    // source in from that side, so only the public side is checked.
    let c = lab_edited(
        "address = \"198.18.0.1/24\"",
        "address = \"198.18.0.1/24\"\nroutes = [{ prefix = \"198.19.0.0/16\", via = \"198.18.0.254\" }]",
        &[],
    );
    assert_eq!(
        c.nat.source_check.inside,
        vec![
            (Ipv4Addr::new(198, 18, 0, 0), 24),
            (Ipv4Addr::new(198, 19, 0, 0), 16)
        ]
    );
    let c = lab_edited(
        "address = \"198.18.0.1/24\"",
        "address = \"198.18.0.1/24\"\nsource_check = false",
        &[],
    );
    assert!(c.nat.source_check.public && !c.nat.source_check.private);
    // Interfaces of one side must agree: the engine checks per side.
    let text = format!(
        "{TWO_INTERFACES}source_check = false\n[[interfaces]]\nname = \"c\"\nside = \"private\"\naddress = \"198.18.1.1/24\"\n[nat]\nvips = [\"203.0.113.10\"]\n"
    );
    let problems = problems_of(&text);
    let ours: Vec<_> = problems
        .iter()
        .filter(|p| p.contains("source_check"))
        .collect();
    assert_eq!(
        ours,
        vec![
            "interfaces[2].source_check: true differs from interfaces[1].source_check (false); \
             the check is per side, expected the same on every private interface"
        ]
    );
}

#[test]
fn pat_quota_defaults_to_a_quarter_of_an_address_and_can_be_set() {
    let c = Config::load_with_env(&lab(), no_env()).unwrap();
    assert_eq!(c.nat.pat_quota, (65535 - 1024 + 1) / 4);
    let c = lab_edited("capacity = 65536", "capacity = 65536\npat_quota = 10", &[]);
    assert_eq!(c.nat.pat_quota, 10);
    let c = lab_edited("capacity = 65536", "capacity = 65536\npat_quota = 0", &[]);
    assert_eq!(c.nat.pat_quota, 0, "0: no limit");
    let text = std::fs::read_to_string(lab()).unwrap().replacen(
        "capacity = 65536",
        "capacity = 65536\npat_quota = -1",
        1,
    );
    let e = Config::from_toml_str(&text, no_env())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("nat.pat_quota: "), "{e}");
}
