//! `mailfleet completion bash` completes subcommands and their flags in a
//! real bash; the zsh and fish scripts parse in their shells when installed.

use std::process::Command;

fn script(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args(["completion", shell])
        .output()
        .unwrap();
    assert!(out.status.success(), "completion {shell} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// What bash offers for the words typed so far (the last one being completed).
fn bash_completes(words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailfleet.bash");
    std::fs::write(&path, script("bash")).unwrap();
    let words_array = words
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let probe = format!(
        "source {path}; COMP_WORDS=({words_array}); COMP_CWORD={cword}; COMP_LINE=\"{line}\"; \
         COMP_POINT=${{#COMP_LINE}}; _mailfleet mailfleet '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path = path.display(),
        cword = words.len() - 1,
        line = words.join(" "),
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    assert_eq!(bash_completes(&["mailfleet", "rou"]), ["routes"]);
    assert!(bash_completes(&["mailfleet", "routes", "--man"]).contains(&"--manifests".to_string()));
    let agent = bash_completes(&["mailfleet", "agent", "run", "--sour"]);
    assert_eq!(agent, ["--source-ip"]);
}

#[test]
fn zsh_and_fish_scripts_parse_where_those_shells_exist() {
    for (shell, check) in [("zsh", ["-n"]), ("fish", ["--no-execute"])] {
        let text = script(shell);
        assert!(
            text.contains("mailfleet"),
            "{shell} script names no command"
        );
        let Ok(mut child) = Command::new(shell)
            .args(check)
            .stdin(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("{shell} is not installed: its script is only generated, not parsed");
            continue;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "{shell} refuses the completion script"
        );
    }
}
