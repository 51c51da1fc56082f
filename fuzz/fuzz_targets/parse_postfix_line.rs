//! Fuzz target: any bytes as a Postfix log line either parse into a delivery
//! attempt whose parts are slices of the line, or give a skip reason; never a
//! panic. A parsed attempt classifies with the logged status as its outcome.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailfleet::reputation::classifier::Classifier;
use mailfleet::reputation::postfix_log::{
    classify_attempt, parse_line_bytes, parse_reply_replacement,
};

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(Classifier::builtin)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(attempt) = parse_line_bytes(data) {
        let line = std::str::from_utf8(data).expect("a parsed line is UTF-8");
        assert!(line.contains(attempt.queue_id));
        assert!(line.contains(attempt.recipient));
        assert!(line.contains(attempt.text));
        let verdict = classify_attempt(classifier(), &attempt);
        assert_eq!(verdict.outcome, attempt.status);
    }
    if let Ok(line) = std::str::from_utf8(data) {
        if let Some(notice) = parse_reply_replacement(line) {
            assert!(line.contains(notice.original) && line.contains(notice.replacement));
        }
    }
});
