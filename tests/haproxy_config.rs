//! The rendered hand-off configuration, checked by Debian's HAProxy
//! (`haproxy -c -f`): the incident's fleet, a route no sender may carry, IPv6
//! senders and the lab's fleet.
//!
//! As root a missing HAProxy is installed with apt-get (as
//! scripts/ensure-tools.sh does for `make test`); without root the test says
//! how to install it and skips.

use std::path::Path;
use std::process::Command;

use jiff::Timestamp;

use mailfleet::api::ReputationState;
use mailfleet::routing::example::{incident_fleet, pair, set_pair};
use mailfleet::routing::haproxy::{handoff_ports, render, HaproxyOptions};
use mailfleet::routing::{compile, RouteTable};

const HAPROXY: &str = "/usr/sbin/haproxy";

fn now() -> Timestamp {
    "2021-11-05T08:10:00Z".parse().unwrap()
}

/// Whether HAProxy can be run: installed here as root, a loud skip otherwise.
fn haproxy_available() -> bool {
    if Path::new(HAPROXY).exists() {
        return true;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: {HAPROXY} is missing and only root installs it; \
             run `sudo apt-get install -y haproxy` (or scripts/ensure-tools.sh as root)"
        );
        return false;
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("apt-get runs");
    assert!(
        installed.success() && Path::new(HAPROXY).exists(),
        "apt-get install haproxy failed; run it by hand (after apt-get update)"
    );
    true
}

/// `haproxy -c -f` on `config`; panics with HAProxy's words when it refuses.
fn check(name: &str, config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("haproxy runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "haproxy refused the {name} config:\n{said}\n--- config ---\n{config}"
    );
    assert!(
        !said.contains("[WARNING]") && !said.contains("[ALERT]"),
        "haproxy warned about the {name} config:\n{said}\n--- config ---\n{config}"
    );
}

fn incident_table() -> RouteTable {
    let (pools, routes) = incident_fleet(now());
    compile(&pools, &routes, now())
}

#[test]
fn haproxy_accepts_every_rendered_config() {
    if !haproxy_available() {
        return;
    }
    let options = HaproxyOptions {
        bind_address: "127.0.0.10".parse().unwrap(),
        ..HaproxyOptions::default()
    };

    let table = incident_table();
    check("incident", &render(&table, &options).unwrap());

    let (mut pools, routes) = incident_fleet(now());
    for pool in &mut pools {
        let ips: Vec<String> = pool.spec.ips.iter().map(|ip| ip.address.clone()).collect();
        for ip in ips {
            set_pair(
                pool,
                &ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
    }
    let all_blocked = compile(&pools, &routes, now());
    let config = render(&all_blocked, &options).unwrap();
    assert!(config.contains("No sender may carry it now"), "{config}");
    check("every Microsoft IP blocked", &config);

    let mut v6 = incident_table();
    for route in &mut v6.routes {
        for target in &mut route.targets {
            target.ip = target.ip.replace("203.0.113.", "2001:db8::");
        }
    }
    let config = render(
        &v6,
        &HaproxyOptions {
            bind_address: "::1".parse().unwrap(),
            ..HaproxyOptions::default()
        },
    )
    .unwrap();
    assert!(config.contains("[2001:db8::10]:25"), "{config}");
    check("IPv6", &config);
}

#[test]
fn the_lab_fleet_renders_a_listener_per_route_on_the_ports_postfix_is_given() {
    if !haproxy_available() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/manifests");
    let manifests = mailfleet::manifests::load_dir(&dir).expect("the lab's manifests load");
    let table = compile(&manifests.pools, &manifests.routes, now());
    let options = HaproxyOptions {
        bind_address: "127.0.0.10".parse().unwrap(),
        log: Some("stderr format raw local0".into()),
        ..HaproxyOptions::default()
    };
    let config = render(&table, &options).unwrap();
    let ports = handoff_ports(&table, options.first_port).unwrap();
    assert_eq!(ports.len(), 5, "{ports:?}");
    for (key, port) in &ports {
        let listener = format!(
            "listen mf-route.{}.{}\n    bind 127.0.0.10:{port}\n",
            key.namespace, key.name
        );
        assert!(config.contains(&listener), "{listener}\n{config}");
    }
    assert_eq!(
        config.matches(" check inter 2s").count(),
        8,
        "one check per sender:\n{config}"
    );
    check("lab", &config);
}
