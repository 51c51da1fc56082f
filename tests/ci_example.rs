//! examples/ci/github-actions-routes.yaml, the pull-request gate shown in the
//! docs, does what it says: its `mailfleet` steps, run as the workflow runs
//! them (bash, the repository checked out, fleet/ holding the manifests),
//! pass on the example fleet and fail on a broken one.

use std::path::Path;
use std::process::{Command, Output};

const WORKFLOW: &str = "examples/ci/github-actions-routes.yaml";

fn mailfleet_steps() -> Vec<String> {
    let text = std::fs::read_to_string(WORKFLOW).unwrap();
    let workflow: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert!(
        workflow["on"]["pull_request"].is_object(),
        "{WORKFLOW} runs on pull requests"
    );
    let steps = workflow["jobs"]["routes"]["steps"].as_array().unwrap();
    let runs: Vec<String> = steps
        .iter()
        .filter_map(|step| step["run"].as_str())
        .filter(|run| run.trim_start().starts_with("mailfleet "))
        .map(String::from)
        .collect();
    assert!(!runs.is_empty(), "{WORKFLOW} runs no mailfleet step");
    runs
}

fn copy_fleet(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir("examples/fleet").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn run_steps(checkout: &Path) -> Vec<Output> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_mailfleet")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    mailfleet_steps()
        .iter()
        .map(|run| {
            // GitHub's default shell for `run`: bash -e {0}.
            Command::new("bash")
                .args(["-e", "-c", run])
                .current_dir(checkout)
                .env("PATH", &path)
                .output()
                .unwrap()
        })
        .collect()
}

#[test]
fn the_gate_passes_the_example_fleet() {
    let checkout = tempfile::tempdir().unwrap();
    copy_fleet(&checkout.path().join("fleet"));
    for out in run_steps(checkout.path()) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("microsoft"));
    }
}

#[test]
fn the_gate_fails_a_pull_request_with_a_misspelt_field() {
    let checkout = tempfile::tempdir().unwrap();
    let fleet = checkout.path().join("fleet");
    copy_fleet(&fleet);
    let route = fleet.join("route-google.yaml");
    let text = std::fs::read_to_string(&route).unwrap();
    std::fs::write(
        &route,
        text.replace("  provider: google", "  providr: google"),
    )
    .unwrap();
    let outs = run_steps(checkout.path());
    let failed = outs
        .iter()
        .find(|o| !o.status.success())
        .expect("a step fails");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("spec.providr: unknown field"));
}
