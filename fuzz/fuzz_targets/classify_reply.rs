//! Fuzz target: any text as an SMTP reply (optionally `reply<TAB>domain<TAB>mx`)
//! is parsed and classified without panicking, and the verdict keeps its
//! invariants: delivered exactly when the category is `none`, conclusive only for
//! a reputation signal, an IP only for failures.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailfleet::reputation::classifier::{extract_ip, parse_reply, Classifier};
use mailfleet::vocab::{Category, Outcome};

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(Classifier::builtin)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\t');
    let reply_text = parts.next().unwrap_or_default();
    let domain = parts.next();
    let mx = parts.next();

    let reply = parse_reply(reply_text);
    let verdict = classifier().classify(&reply, domain, mx);
    assert_eq!(
        verdict.category == Category::None,
        verdict.outcome == Outcome::Delivered
    );
    assert!(!verdict.conclusive || verdict.category.is_reputation_signal());
    assert!(verdict.outcome != Outcome::Delivered || verdict.ip.is_none());
    if let Some(ip) = verdict.ip {
        assert_eq!(extract_ip(&reply.text), Some(ip));
    }
});
