//! The public reply corpus (tests/fixtures/replies/*.jsonl): real reply texts
//! from public sources, each with its source and the verdict it must get.
//!
//! Every fixture is classified twice:
//! - with the recipient domain (and MX host, for gateways and Microsoft 365
//!   tenants) it was seen with: provider, outcome, category and conclusive must
//!   be as written;
//! - bare, as `mailfleet classify` gets a pasted reply: the provider must be the
//!   one the reply's own words name (`bare_provider`), with the same verdict when
//!   that is the same provider, and never a block the reply does not state.
//!
//! Fields: `source` (the public address the text was read at), `reply`, optional `code` (the reply code the source lists a text
//! under when the text is quoted without it), `domain`, optional `mx`,
//! `provider`, `outcome`, `category`, `conclusive`, `bare_provider`, optional
//! `ip` (the address the reply names).

use std::net::IpAddr;
use std::path::Path;

use mailfleet::reputation::classifier::{Classifier, ProviderSource, Verdict};
use mailfleet::vocab::Category;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    source: String,
    reply: String,
    #[serde(default)]
    code: Option<u16>,
    domain: String,
    #[serde(default)]
    mx: Option<String>,
    provider: String,
    outcome: String,
    category: String,
    conclusive: bool,
    bare_provider: String,
    #[serde(default)]
    ip: Option<IpAddr>,
}

fn fixtures() -> Vec<(String, usize, Fixture)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for (i, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fixture: Fixture =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}:{}: {e}", i + 1));
            assert!(
                is_public_address(&fixture.source),
                "{name}:{}: every fixture names its public source",
                i + 1
            );
            out.push((name.clone(), i + 1, fixture));
        }
    }
    out
}

/// A web address (some public pages are still served over plain HTTP).
fn is_public_address(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

fn text_of(f: &Fixture) -> String {
    match f.code {
        Some(code) => format!("{code} {}", f.reply),
        None => f.reply.clone(),
    }
}

fn word<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn every_fixture_names_a_public_source() {
    let all = fixtures();
    assert!(!all.is_empty(), "the corpus is empty");
    for (file, line, fixture) in &all {
        assert!(
            is_public_address(&fixture.source),
            "{file}:{line}: the source must be a public address, not {:?}",
            fixture.source
        );
    }
}

#[test]
fn every_reply_gets_its_verdict_with_its_domain() {
    let classifier = Classifier::builtin();
    let mut wrong = Vec::new();
    for (file, line, f) in fixtures() {
        let text = text_of(&f);
        let v = classifier.classify_text(&text, Some(&f.domain), f.mx.as_deref());
        let got = (
            v.provider.to_string(),
            word(v.outcome),
            word(v.category),
            v.conclusive,
        );
        let want = (
            f.provider.clone(),
            f.outcome.clone(),
            f.category.clone(),
            f.conclusive,
        );
        if got != want || (f.ip.is_some() && v.ip != f.ip) {
            wrong.push(format!(
                "{file}:{line} {}\n  reply: {text}\n  want {want:?} ip {:?}\n  got  {got:?} ip {:?} rule {:?}",
                f.source, f.ip, v.ip, v.rule
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn bare_replies_name_their_provider_and_never_invent_a_block() {
    let classifier = Classifier::builtin();
    let mut wrong = Vec::new();
    for (file, line, f) in fixtures() {
        let text = text_of(&f);
        let bare: Verdict = classifier.classify_text(&text, None, None);
        let with_domain = classifier.classify_text(&text, Some(&f.domain), f.mx.as_deref());
        let mut problems = Vec::new();
        if bare.provider != f.bare_provider.as_str() {
            problems.push(format!(
                "provider {} not {}",
                bare.provider, f.bare_provider
            ));
        }
        if bare.provider == with_domain.provider
            && (bare.category, bare.conclusive) != (with_domain.category, with_domain.conclusive)
        {
            problems.push("same provider, other verdict".to_string());
        }
        if f.category != "ip_blocklisted"
            && (bare.category == Category::IpBlocklisted || bare.conclusive)
        {
            problems.push("a block the reply does not state".to_string());
        }
        let source_ok = match bare.provider_source {
            ProviderSource::None => bare.provider == "other",
            ProviderSource::Reply | ProviderSource::Relay => bare.provider != "other",
            other => {
                problems.push(format!("provider source {other:?} for a bare reply"));
                true
            }
        };
        if !source_ok {
            problems.push(format!("provider source {:?}", bare.provider_source));
        }
        if !problems.is_empty() {
            wrong.push(format!(
                "{file}:{line} {}\n  reply: {text}\n  {}\n  bare verdict {bare:?}",
                f.source,
                problems.join("; ")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every big provider and gateway is found bare, from its own words, in at
/// least one reply of the corpus (the fingerprint unit tests cover the rest).
#[test]
fn the_big_providers_and_gateways_are_each_found_bare_in_the_corpus() {
    let classifier = Classifier::builtin();
    let all = fixtures();
    assert!(all.len() >= 150, "the corpus holds {} replies", all.len());
    let mut missing = Vec::new();
    for provider in [
        "microsoft",
        "google",
        "yahoo",
        "apple",
        "proofpoint",
        "mimecast",
        "barracuda",
        "trendmicro",
    ] {
        let found = all.iter().any(|(_, _, f)| {
            f.bare_provider == provider && {
                let bare = classifier.classify_text(&text_of(f), None, None);
                bare.provider == provider
                    && matches!(
                        bare.provider_source,
                        ProviderSource::Reply | ProviderSource::Relay
                    )
            }
        });
        if !found {
            missing.push(provider);
        }
    }
    assert!(
        missing.is_empty(),
        "not found bare in the corpus: {missing:?}"
    );
}
