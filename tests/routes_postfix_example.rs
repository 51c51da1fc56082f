//! `mailfleet routes --format postfix` on the example fleet, tried as a new
//! user would: every sender's fragment names its HELO name and the intake
//! restrictions, and with examples/relay (Microsoft blocks every IP, so the
//! microsoft route runs in Relay mode through the relay with credentials)
//! the relay login settings.

use std::process::Command;

fn routes(manifests: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mailfleet"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("routes");
    for dir in manifests {
        command.args(["--manifests", dir]);
    }
    let out = command.args(["--format", "postfix"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_example_fleet_renders_helo_names_and_intake_restrictions() {
    let text = routes(&["examples/fleet"]);
    for helo in ["mta10.mail.example.net", "mta15.mail.example.net"] {
        assert!(
            text.contains(&format!("\nsmtp_helo_name = {helo}\n")),
            "{helo}:\n{text}"
        );
    }
    assert!(text.contains("\nmynetworks = 127.0.0.0/8 [::1]/128 10.42.0.0/16\n"));
    assert!(text
        .contains("\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"));
    // No route is in Relay mode: nothing logs in anywhere.
    assert!(!text.contains("smtp_sasl_auth_enable"), "{text}");
}

#[test]
fn a_route_in_relay_mode_with_credentials_renders_the_relay_login() {
    let text = routes(&["examples/fleet", "examples/relay"]);
    for setting in [
        "-o smtp_sasl_auth_enable=yes",
        "-o smtp_sasl_password_maps=hash:${config_directory}/mailfleet_sasl_passwd",
        "-o smtp_tls_security_level=encrypt",
        "-o smtp_sasl_auth_soft_bounce=yes",
    ] {
        assert!(text.contains(setting), "{setting}:\n{text}");
    }
    assert!(
        text.contains("mf-relay:[smtp.relay.example.net]:587"),
        "the microsoft route goes to the relay:\n{text}"
    );
}
