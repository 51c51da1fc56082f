//! docs/AGENT.md matches the code: every option of `agent run` and `sender
//! run` is in its table and nothing else is, and the names a reader copies
//! (the sender ConfigMap, the metrics port) are the ones the operator uses.

use std::collections::BTreeSet;
use std::process::Command;

use mailfleet::operator::build::config_map_name;
use mailfleet::operator::build::deployment::AGENT_METRICS_PORT;
use regex::Regex;

const AGENT_MD: &str = "docs/AGENT.md";

fn help_flags(args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let flag = Regex::new(r"(?m)^\s+(?:-[a-zA-Z], )?(--[a-z][a-z0-9-]*)").unwrap();
    flag.captures_iter(&text)
        .map(|c| c[1].to_string())
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// The flags named in the first column of the options table under `heading`.
fn documented_flags(heading: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(AGENT_MD).unwrap();
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{AGENT_MD} has no {heading}"));
    let section = &text[start..];
    let table_start = section.find("\n| option").expect("an options table");
    let flag = Regex::new(r"`(--[a-z][a-z0-9-]*)").unwrap();
    let mut flags = BTreeSet::new();
    for line in section[table_start + 1..].lines() {
        if !line.starts_with('|') {
            break;
        }
        let first = line.split('|').nth(1).unwrap_or("");
        flags.extend(flag.captures_iter(first).map(|c| c[1].to_string()));
    }
    flags
}

#[test]
fn the_agent_run_table_lists_exactly_the_options_of_agent_run() {
    let help = help_flags(&["agent", "run"]);
    let documented = documented_flags("## `agent run`");
    let missing: Vec<_> = help.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&help).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{AGENT_MD}, agent run: options not documented {missing:?}, documented options that do not exist {stale:?}"
    );
}

#[test]
fn sender_run_takes_the_agent_options_plus_the_ones_the_docs_name() {
    let agent = help_flags(&["agent", "run"]);
    let sender = help_flags(&["sender", "run"]);
    let text = std::fs::read_to_string(AGENT_MD).unwrap();
    let extra: Vec<_> = sender
        .difference(&agent)
        .filter(|flag| !text.contains(&format!("`{flag}")))
        .collect();
    assert!(
        extra.is_empty(),
        "{AGENT_MD} does not name these options of sender run: {extra:?}"
    );
}

#[test]
fn the_names_a_reader_copies_are_the_operators() {
    let text = std::fs::read_to_string(AGENT_MD).unwrap();
    let config_map = config_map_name("bulk", "203.0.113.10").unwrap();
    assert!(
        text.contains(&format!("configMap: {{name: {config_map}}}")),
        "{AGENT_MD} should mount the sender ConfigMap the operator names {config_map}"
    );
    assert!(
        text.contains(&format!(
            "{{name: agent-metrics, containerPort: {AGENT_METRICS_PORT}}}"
        )),
        "{AGENT_MD} should name the agent's port agent-metrics, {AGENT_METRICS_PORT}"
    );
    assert!(
        !text.contains("mailfleet-operator.mailfleet-system"),
        "{AGENT_MD} names a feedback Service the chart does not make"
    );
}
