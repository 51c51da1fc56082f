//! Remembering which pod a feedback token belongs to, so an agent reporting
//! every few seconds costs one TokenReview per token lifetime instead of one
//! per report.
//!
//! Only accepted tokens are kept, keyed by the whole token (a shorter digest
//! could let a colliding token in), each until the token's own `exp` claim
//! or [`MAX_TTL`], whichever is sooner, and never more than [`MAX_ENTRIES`]:
//! a full cache drops its expired entries, then stops adding (the next
//! report just asks the API server again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// The longest a review is trusted without asking again, whatever the token
/// says: the lifetime of the agents' projected token. Trusting it that long
/// is safe because every report also needs the token's pod, with the uid the
/// review named, in the Pods store: a deleted pod's token is refused at once.
/// At 20,000 sender pods the kubelet's renewals (at 80 % of the hour) cost
/// about 7 reviews a second, where ten minutes cost 33.
pub const MAX_TTL: Duration = Duration::from_secs(super::build::agent_token::TOKEN_SECONDS as u64);
/// How long a token without an `exp` claim is trusted.
pub const NO_EXP_TTL: Duration = Duration::from_secs(60);
/// Tokens kept at most (a little over one per sender pod of a large fleet).
pub const MAX_ENTRIES: usize = 50_000;

/// The pod a reviewed token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    pub namespace: String,
    pub pod: String,
    /// The pod's uid as the token names it, when it does.
    pub pod_uid: Option<String>,
}

#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (TokenIdentity, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, token: &str, now: Instant) -> Option<TokenIdentity> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(token) {
            Some((identity, until)) if *until > now => Some(identity.clone()),
            Some(_) => {
                entries.remove(token);
                None
            }
            None => None,
        }
    }

    /// Keeps `identity` for `token` for `ttl` (nothing for a zero `ttl`).
    pub fn insert(&self, token: &str, identity: TokenIdentity, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        entries.insert(token.to_string(), (identity, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long an accepted token may be trusted: until its `exp` claim (read
/// without checking the signature, which the TokenReview just did), at most
/// [`MAX_TTL`]; [`NO_EXP_TTL`] when it has none.
pub fn trust_for(token: &str, now_unix: i64) -> Duration {
    match expiry(token) {
        Some(exp) if exp <= now_unix => Duration::ZERO,
        Some(exp) => Duration::from_secs((exp - now_unix) as u64).min(MAX_TTL),
        None => NO_EXP_TTL,
    }
}

/// The `exp` claim of a JWT, if the token is one and has it.
fn expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.signature",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn a_token_is_trusted_until_its_expiry_at_most_an_hour() {
        let now = 1_800_000_000;
        assert_eq!(
            trust_for(&jwt(serde_json::json!({"exp": now + 90})), now),
            Duration::from_secs(90)
        );
        assert_eq!(
            trust_for(&jwt(serde_json::json!({"exp": now + 1800})), now),
            Duration::from_secs(1800)
        );
        assert_eq!(
            trust_for(&jwt(serde_json::json!({"exp": now + 7200})), now),
            MAX_TTL
        );
        assert_eq!(MAX_TTL, Duration::from_secs(3600));
        assert_eq!(
            trust_for(&jwt(serde_json::json!({"exp": now - 1})), now),
            Duration::ZERO
        );
        assert_eq!(
            trust_for(&jwt(serde_json::json!({"sub": "x"})), now),
            NO_EXP_TTL
        );
        assert_eq!(trust_for("not-a-jwt", now), NO_EXP_TTL);
    }

    #[test]
    fn entries_expire_and_a_zero_lifetime_is_not_kept() {
        let cache = TokenCache::default();
        let id = TokenIdentity {
            namespace: "mail".into(),
            pod: "p".into(),
            pod_uid: None,
        };
        let t0 = Instant::now();
        cache.insert("a", id.clone(), Duration::from_secs(10), t0);
        cache.insert("b", id.clone(), Duration::ZERO, t0);
        assert_eq!(cache.get("a", t0 + Duration::from_secs(9)), Some(id));
        assert_eq!(cache.get("b", t0), None);
        assert_eq!(cache.get("a", t0 + Duration::from_secs(10)), None);
        assert!(cache.is_empty());
    }
}
