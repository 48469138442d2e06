//! The `[ha]` section: what it reads, its defaults, and one clear line per problem.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use vipgate_config::{Config, Ha, SyncKeySource};

const BASE: &str = r#"
    [workers]
    cores = [1]
    [[interfaces]]
    name = "pub0"
    side = "public"
    address = "203.0.113.2/24"
    [[interfaces]]
    name = "priv0"
    side = "private"
    address = "198.18.0.2/24"
    virtual_addresses = ["198.18.0.1"]
    [nat]
    vips = ["203.0.113.10"]
"#;

fn with(extra: &str) -> Result<Config, vipgate_config::ConfigError> {
    Config::from_toml_str(&format!("{BASE}\n{extra}"), HashMap::new())
}

fn problems(extra: &str) -> Vec<String> {
    let e = with(extra).unwrap_err();
    e.problems().iter().map(ToString::to_string).collect()
}

#[test]
fn a_full_section_is_read() {
    let c = with(
        r#"
        [ha]
        vrid = 51
        priority = 150
        interface = "pub0"
        advert_interval_ms = 10
        preempt = false
        preempt_delay_ms = 2000
        peers = ["203.0.113.3"]
        virtual_mac = true
        garp_count = 3
        garp_interval_ms = 20
        garp_refresh_secs = 0
        track_link_penalty = 60
        track_pool_penalty = 40
        [ha.sync]
        interface = "sync0"
        local = "198.18.9.1"
        peer = "198.18.9.2:7000"
        key = "0123456789abcdef0123"
        heartbeat_ms = 50
        dead_ms = 300
        retransmit_ms = 20
        refresh_secs = 10
        "#,
    )
    .unwrap();
    assert_eq!(
        c.interfaces[1].virtual_addrs,
        [Ipv4Addr::new(198, 18, 0, 1)]
    );
    let ha = c.ha.unwrap();
    assert_eq!(
        (ha.vrid, ha.priority, ha.interface, ha.advert_interval_ms),
        (51, 150, 0, 10)
    );
    assert!(!ha.preempt && ha.virtual_mac);
    assert_eq!(ha.preempt_delay_ms, 2000);
    assert_eq!(ha.peers, [Ipv4Addr::new(203, 0, 113, 3)]);
    assert_eq!(
        (
            ha.garp_count,
            ha.garp_interval_ms,
            ha.garp_refresh_secs,
            ha.track_link_penalty
        ),
        (3, 20, 0, 60)
    );
    assert_eq!(ha.track_pool_penalty, 40);
    let s = ha.sync.unwrap();
    assert_eq!(s.interface, "sync0");
    assert_eq!(
        s.local,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 1), Ha::DEFAULT_SYNC_PORT)
    );
    assert_eq!(s.peer, "198.18.9.2:7000".parse().unwrap());
    assert_eq!(
        s.key,
        SyncKeySource::Inline(b"0123456789abcdef0123".to_vec())
    );
    assert_eq!(s.key.read().unwrap(), b"0123456789abcdef0123");
    assert_eq!(
        (s.heartbeat_ms, s.dead_ms, s.retransmit_ms, s.refresh_secs),
        (50, 300, 20, 10)
    );
    assert!(
        !format!("{s:?}").contains("0123456789"),
        "the key never prints"
    );
}

#[test]
fn defaults_are_keepalived_like() {
    let ha = with("[ha]\nvrid = 7\ninterface = \"pub0\"")
        .unwrap()
        .ha
        .unwrap();
    assert_eq!((ha.priority, ha.advert_interval_ms), (100, 1000));
    assert!(ha.preempt && !ha.virtual_mac && ha.peers.is_empty() && ha.sync.is_none());
    assert_eq!(
        (ha.garp_count, ha.garp_refresh_secs, ha.track_link_penalty),
        (5, 60, 50)
    );
    assert!(with("").unwrap().ha.is_none());
}

#[test]
fn every_problem_is_one_line_naming_its_key() {
    let p = problems(
        r#"
        [ha]
        vrid = 0
        priority = 256
        interface = "eth9"
        advert_interval_ms = 15
        [ha.sync]
        interface = "priv0"
        local = "198.18.9.1:0"
        peer = "nowhere"
        key = "short"
        heartbeat_ms = 100
        dead_ms = 200
        "#,
    );
    let keys: Vec<&str> = p.iter().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "ha.vrid",
            "ha.priority",
            "ha.advert_interval_ms",
            "ha.interface",
            "ha.sync.interface",
            "ha.sync.local",
            "ha.sync.peer",
            "ha.sync.key",
            "ha.sync.dead_ms",
        ],
        "{p:#?}"
    );
    assert!(p[3].contains("\"pub0\", \"priv0\""), "{}", p[3]);
    assert!(p[4].contains("data interface"), "{}", p[4]);
}

#[test]
fn peers_must_be_other_boxes_on_the_election_segment() {
    let p = problems("[ha]\nvrid = 1\ninterface = \"pub0\"\npeers = [\"198.18.0.3\"]");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("ha.peers[0]: \"198.18.0.3\" is not another box on pub0"),
        "{p:?}"
    );
    let p = problems("[ha]\nvrid = 1\ninterface = \"pub0\"\npeers = [\"203.0.113.2\"]");
    assert!(p[0].starts_with("ha.peers[0]"), "our own address: {p:?}");
}

#[test]
fn the_key_comes_from_exactly_one_place() {
    let sync = |key: &str| {
        problems(&format!(
            "[ha]\nvrid = 1\ninterface = \"pub0\"\n[ha.sync]\ninterface = \"s\"\nlocal = \"198.18.9.1\"\npeer = \"198.18.9.2\"\n{key}"
        ))
    };
    assert!(sync("")[0].starts_with("ha.sync.key: missing"));
    assert!(sync("key = \"0123456789abcdef\"\nkey_file = \"/k\"")[0]
        .starts_with("ha.sync.key: is set together with ha.sync.key_file"));
    assert!(sync("key = \"short\"")[0].starts_with("ha.sync.key: holds 5 bytes"));
    assert!(sync("key_file = \"relative.key\"")[0]
        .starts_with("ha.sync.key_file: \"relative.key\" is not an absolute path"));
    // The file is read on the host (check, run), not while validating.
    let missing = SyncKeySource::File("/nonexistent/vipgate.key".into());
    assert!(missing
        .read()
        .unwrap_err()
        .starts_with("ha.sync.key_file: \"/nonexistent/vipgate.key\" cannot be read"));
    let dir = std::env::temp_dir().join(format!("vipgate-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sync.key");
    std::fs::write(&file, "a-key-of-twenty-bytes\n").unwrap();
    let c = with(&format!(
        "[ha]\nvrid = 1\ninterface = \"pub0\"\n[ha.sync]\ninterface = \"s\"\nlocal = \"198.18.9.1\"\npeer = \"198.18.9.2\"\nkey_file = {:?}",
        file.display().to_string()
    ));
    let key = c.unwrap().ha.unwrap().sync.unwrap().key.read();
    std::fs::write(&file, "short\n").unwrap();
    let short = SyncKeySource::File(file.clone()).read();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(key.unwrap(), b"a-key-of-twenty-bytes");
    assert!(short.unwrap_err().contains("holds a key of 5 bytes"));
}

#[test]
fn peers_and_priority_come_from_the_environment_too() {
    let env = HashMap::from([
        (
            "VIPGATE_HA__PEERS".to_string(),
            "203.0.113.3,203.0.113.4".to_string(),
        ),
        ("VIPGATE_HA__PRIORITY".to_string(), "200".to_string()),
    ]);
    let c = Config::from_toml_str(
        &format!("{BASE}\n[ha]\nvrid = 1\ninterface = \"pub0\""),
        env,
    )
    .unwrap();
    let ha = c.ha.unwrap();
    assert_eq!(ha.priority, 200);
    assert_eq!(ha.peers.len(), 2);
}

#[test]
fn virtual_addresses_are_hosts_of_their_subnet() {
    let text = BASE.replace("[\"198.18.0.1\"]", "[\"198.18.1.1\", \"198.18.0.2\"]");
    let e = Config::from_toml_str(&text, HashMap::new()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("interfaces[1].virtual_addresses[0]"),
        "{e}"
    );
}

#[test]
fn changing_ha_needs_a_restart() {
    let a = with("[ha]\nvrid = 1\ninterface = \"pub0\"").unwrap();
    let b = with("[ha]\nvrid = 2\ninterface = \"pub0\"").unwrap();
    assert_eq!(a.structural_change(&b).as_deref(), Some("ha"));
    let c = Config::from_toml_str(
        &BASE.replace("198.18.0.1\"", "198.18.0.3\""),
        HashMap::new(),
    )
    .unwrap();
    let d = Config::from_toml_str(BASE, HashMap::new()).unwrap();
    assert_eq!(
        c.structural_change(&d).as_deref(),
        Some("interfaces[1].virtual_addresses")
    );
}
