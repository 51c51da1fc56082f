//! The packed forms that keep a pool's status bounded.
//!
//! A pool may hold 256 IPs, and every IP a pair with each provider it sends
//! to (the builtin providers and gateways, `other`, and up to 16 declared
//! ones), each with a sliding window of up to 16 buckets of four counts.
//! Written as JSON objects that is several MiB, over etcd's object limit.
//! Two forms keep it far under 1 MiB (the test below builds the largest pool
//! and measures it):
//!
//! - a pair's `window` is one string: the buckets packed as zigzag varints
//!   (a presence bitmap of the bucket slots, then per bucket the attempts,
//!   the attempts not delivered, and only when some were not delivered the
//!   IP-blocklisted and rate-limited counts), in unpadded base64url;
//! - the pairs that are plain (Healthy at full allowance with no step ahead:
//!   first seen, warmed up, or recovered) are not listed in `reputation` but
//!   packed together into the IP's `healthyPairs` string: a table of the
//!   IP's reason and evidence texts (a warmed-up IP's pairs share theirs),
//!   then per pair the provider name, since, reason and evidence (as table
//!   entries), block count, last hold-down and window.
//!
//! Everything an older version wrote still reads: a `window` given as a list
//! of bucket objects, and plain pairs listed in `reputation`.
//!
//! Why not a general-purpose compressor: the counts are small integers in a
//! known layout; a varint per count is most of the gain, needs no new crate,
//! and keeps one pair's bytes independent of its neighbours'.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::sender_pool::{ProviderReputation, ReputationState, WindowBucket};

/// Version byte of a packed window.
const PACKED_VERSION: u8 = 1;
/// Version byte of a packed window with spam complaints: every bucket's
/// counts are followed by its complaints. A window without complaints is
/// still written in the first format.
const PACKED_COMPLAINTS_VERSION: u8 = 2;
/// Version byte of packed healthy pairs.
const PAIRS_VERSION: u8 = 2;
/// More texts than one IP's pairs can hold (one reason and one evidence each).
const MAX_TEXTS: u64 = 4096;
/// More buckets than any window holds (16), with room for a changed window.
const MAX_BUCKETS: u64 = 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PackError(String);

fn bad(what: impl Into<String>) -> PackError {
    PackError(what.into())
}

/// Whether a pair is Healthy at full allowance with nothing ahead of it
/// (no cap, override, next step, recovery or probe progress, or claims):
/// what most pairs are, first seen, warmed up or recovered.
pub fn is_plain(pair: &ProviderReputation) -> bool {
    pair.state == ReputationState::Healthy
        && pair.allowance_percent == 100
        && pair.hourly_cap.is_none()
        && pair.overridden_by.is_none()
        && pair.next_step_at.is_none()
        && pair.recovery_step.is_none()
        && pair.throttle_step.is_none()
        && pair.paused_until.is_none()
        && pair.probe_successes == 0
        && pair.dnsbl_claims.is_empty()
        && pair.complaint_rate.is_none()
        && pair.window.iter().all(|b| b.complaints == 0)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_u(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put(out: &mut Vec<u8>, value: i64) {
    put_u(out, zigzag(value));
}

fn take_u(input: &mut &[u8]) -> Result<u64, PackError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input
            .split_first()
            .ok_or_else(|| bad("the packed counts end early"))?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(bad("a packed number is longer than 64 bits"))
}

fn take(input: &mut &[u8]) -> Result<i64, PackError> {
    take_u(input).map(unzigzag)
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    i64::try_from(a).unwrap_or(i64::MAX)
}

/// Appends a window: bucket count, then the slot size (the largest step
/// every bucket start is a multiple of), the first slot, a bitmap of the
/// slots that hold a bucket, and the counts of each bucket.
///
/// The first slot is written relative to `base` (the previous pair's, so
/// the pairs of one IP, whose windows start together, cost one byte there).
fn pack_window(window: &[WindowBucket], base: &mut i64, out: &mut Vec<u8>, complaints: bool) {
    put(out, window.len() as i64);
    if window.is_empty() {
        return;
    }
    let starts: Vec<i64> = window.iter().map(|b| b.start.0.as_second()).collect();
    let first = starts[0];
    let mut unit = starts.iter().fold(0, |g, s| gcd(g, s - first));
    if unit == 0 {
        unit = 1;
    }
    put(out, unit);
    put(out, first - *base);
    *base = first;
    let last_slot = (starts[starts.len() - 1] - first) / unit;
    // Buckets are kept in order; a window out of order (never written by
    // the engine) is packed as listed, slot by slot.
    let ordered = starts.windows(2).all(|w| w[0] < w[1]);
    if ordered && last_slot < 8 * 64 {
        put(out, last_slot + 1);
        let mut bitmap = vec![0u8; (last_slot as usize + 1).div_ceil(8)];
        for s in &starts {
            let slot = ((s - first) / unit) as usize;
            bitmap[slot / 8] |= 1 << (slot % 8);
        }
        out.extend_from_slice(&bitmap);
    } else {
        put(out, -1);
        for s in &starts {
            put(out, (s - first) / unit);
        }
    }
    // A clean bucket (all delivered) is one number: twice its attempts. Any
    // other has the low bit set, then what was not delivered and why.
    for b in window {
        let missed = b.attempts.saturating_sub(b.delivered);
        let clean =
            b.attempts >= 0 && missed == 0 && b.ip_blocklisted == 0 && b.ip_rate_limited == 0;
        if clean {
            put_u(out, (b.attempts as u64) << 1);
        } else {
            put_u(out, (zigzag(b.attempts) << 1) | 1);
            put(out, missed);
            put(out, b.ip_blocklisted);
            put(out, b.ip_rate_limited);
        }
        if complaints {
            put(out, b.complaints);
        }
    }
}

fn at_second(seconds: i64) -> Result<Time, PackError> {
    Timestamp::from_second(seconds)
        .map(Time)
        .map_err(|e| bad(format!("a packed time is out of range: {e}")))
}

fn unpack_window(
    input: &mut &[u8],
    base: &mut i64,
    with_complaints: bool,
) -> Result<Vec<WindowBucket>, PackError> {
    let count = take(input)?;
    if !(0..=MAX_BUCKETS as i64).contains(&count) {
        return Err(bad(format!("a packed window claims {count} buckets")));
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let unit = take(input)?;
    let first = take(input)?
        .checked_add(*base)
        .ok_or_else(|| bad("a packed window start overflows"))?;
    *base = first;
    let slots_len = take(input)?;
    let mut slots = Vec::with_capacity(count as usize);
    if slots_len >= 0 {
        if slots_len > 8 * 64 {
            return Err(bad("a packed window's bitmap is too long"));
        }
        let bytes = (slots_len as usize).div_ceil(8);
        if input.len() < bytes {
            return Err(bad("the packed window's bitmap ends early"));
        }
        let (bitmap, rest) = input.split_at(bytes);
        *input = rest;
        for slot in 0..slots_len as usize {
            if bitmap[slot / 8] & (1 << (slot % 8)) != 0 {
                slots.push(slot as i64);
            }
        }
        if slots.len() != count as usize {
            return Err(bad("the packed window's bitmap and bucket count disagree"));
        }
    } else {
        for _ in 0..count {
            slots.push(take(input)?);
        }
    }
    let mut window = Vec::with_capacity(slots.len());
    for slot in slots {
        let start = slot
            .checked_mul(unit)
            .and_then(|offset| offset.checked_add(first))
            .ok_or_else(|| bad("a packed bucket start overflows"))?;
        let head = take_u(input)?;
        let (attempts, missed, ip_blocklisted, ip_rate_limited) = if head & 1 == 0 {
            (i64::try_from(head >> 1).unwrap_or(i64::MAX), 0, 0, 0)
        } else {
            let attempts = unzigzag(head >> 1);
            (attempts, take(input)?, take(input)?, take(input)?)
        };
        let complaints = if with_complaints { take(input)? } else { 0 };
        window.push(WindowBucket {
            start: at_second(start)?,
            attempts,
            delivered: attempts.saturating_sub(missed),
            ip_blocklisted,
            ip_rate_limited,
            complaints,
        });
    }
    Ok(window)
}

/// Packs a window into its status string.
pub fn window_text(window: &[WindowBucket]) -> String {
    let complaints = window.iter().any(|b| b.complaints != 0);
    let version = if complaints {
        PACKED_COMPLAINTS_VERSION
    } else {
        PACKED_VERSION
    };
    let mut out = vec![version];
    pack_window(window, &mut 0, &mut out, complaints);
    URL_SAFE_NO_PAD.encode(out)
}

/// Reads a window's status string.
pub fn read_window_text(text: &str) -> Result<Vec<WindowBucket>, PackError> {
    let (bytes, complaints) = match unpacked(text, PACKED_COMPLAINTS_VERSION) {
        Ok(bytes) => (bytes, true),
        Err(_) => (unpacked(text, PACKED_VERSION)?, false),
    };
    let mut input = bytes.as_slice();
    let window = unpack_window(&mut input, &mut 0, complaints)?;
    if !input.is_empty() {
        return Err(bad("the packed window has bytes left over"));
    }
    Ok(window)
}

fn unpacked(text: &str, version: u8) -> Result<Vec<u8>, PackError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| bad(format!("not base64url: {e}")))?;
    match bytes.split_first() {
        Some((&v, _)) if v == version => Ok(bytes[1..].to_vec()),
        Some((v, _)) => Err(bad(format!(
            "packed in format {v}; this version reads format {version}"
        ))),
        None => Err(bad("empty")),
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_u(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn take_text(input: &mut &[u8], what: &str) -> Result<String, PackError> {
    let len = take_u(input)?;
    if len > 4096 || input.len() < len as usize {
        return Err(bad(format!("a packed {what} is cut or too long")));
    }
    let (text, rest) = input.split_at(len as usize);
    *input = rest;
    String::from_utf8(text.to_vec()).map_err(|_| bad(format!("a packed {what} is not UTF-8")))
}

/// An optional number: 0 for none, else the value plus one.
fn put_optional(out: &mut Vec<u8>, value: Option<i64>) {
    put_u(out, value.map_or(0, |v| zigzag(v) + 1));
}

fn take_optional(input: &mut &[u8]) -> Result<Option<i64>, PackError> {
    Ok(match take_u(input)? {
        0 => None,
        v => Some(unzigzag(v - 1)),
    })
}

/// Packs plain pairs (see [`is_plain`]): the table of their reason and
/// evidence texts, then per pair name, since, reason, evidence, block count,
/// last hold-down and window.
pub fn plain_pairs_text(pairs: &[&ProviderReputation]) -> String {
    let mut texts: Vec<&str> = Vec::new();
    for pair in pairs {
        for text in std::iter::once(pair.reason.as_str()).chain(pair.last_evidence.as_deref()) {
            if !texts.contains(&text) {
                texts.push(text);
            }
        }
    }
    let position = |text: &str| texts.iter().position(|t| *t == text).unwrap_or(0) as u64;
    let mut out = vec![PAIRS_VERSION];
    put_u(&mut out, texts.len() as u64);
    for text in &texts {
        put_text(&mut out, text);
    }
    // Times relative to the previous pair's: one IP's pairs were mostly
    // seen, warmed up and counted at the same moments.
    let (mut since, mut window_base) = (0i64, 0i64);
    for pair in pairs {
        put_text(&mut out, &pair.provider);
        put(&mut out, pair.since.0.as_second() - since);
        since = pair.since.0.as_second();
        put_u(&mut out, position(&pair.reason));
        put_u(
            &mut out,
            pair.last_evidence.as_deref().map_or(0, |e| position(e) + 1),
        );
        put(&mut out, i64::from(pair.block_count));
        put_optional(&mut out, pair.hold_down_seconds);
        pack_window(&pair.window, &mut window_base, &mut out, false);
    }
    URL_SAFE_NO_PAD.encode(out)
}

/// Reads the plain pairs of an IP.
pub fn read_plain_pairs_text(text: &str) -> Result<Vec<ProviderReputation>, PackError> {
    let bytes = unpacked(text, PAIRS_VERSION)?;
    let mut input = bytes.as_slice();
    let count = take_u(&mut input)?;
    if count > MAX_TEXTS {
        return Err(bad(format!("packed healthy pairs claim {count} texts")));
    }
    let mut texts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        texts.push(take_text(&mut input, "reason or evidence")?);
    }
    let text_at = |i: u64| {
        texts
            .get(i as usize)
            .cloned()
            .ok_or_else(|| bad(format!("a packed pair names text {i} of {}", texts.len())))
    };
    let mut pairs = Vec::new();
    let (mut since, mut window_base) = (0i64, 0i64);
    while !input.is_empty() {
        let provider = take_text(&mut input, "provider name")?;
        if provider.is_empty() || provider.len() > 253 {
            return Err(bad("a packed provider name is empty or too long"));
        }
        since = take(&mut input)?
            .checked_add(since)
            .ok_or_else(|| bad("a packed time overflows"))?;
        let reason = text_at(take_u(&mut input)?)?;
        let last_evidence = match take_u(&mut input)? {
            0 => None,
            i => Some(text_at(i - 1)?),
        };
        let block_count = i32::try_from(take(&mut input)?)
            .map_err(|_| bad("a packed block count is out of range"))?;
        let hold_down_seconds = take_optional(&mut input)?;
        let window = unpack_window(&mut input, &mut window_base, false)?;
        pairs.push(ProviderReputation {
            reason,
            last_evidence,
            hold_down_seconds,
            block_count,
            window,
            ..ProviderReputation::first_seen(provider, at_second(since)?)
        });
    }
    Ok(pairs)
}

/// `ProviderReputation::window`: written packed, read packed or as a list.
pub(crate) mod window_field {
    use super::*;

    pub fn serialize<S: Serializer>(window: &[WindowBucket], s: S) -> Result<S::Ok, S::Error> {
        window_text(window).serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Packed(String),
        Listed(Vec<WindowBucket>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<WindowBucket>, D::Error> {
        match Stored::deserialize(d)? {
            Stored::Listed(window) => Ok(window),
            Stored::Packed(text) => read_window_text(&text)
                .map_err(|e| serde::de::Error::custom(format!("a packed window: {e}"))),
        }
    }
}

/// `IpStatus::healthy_pairs`: the plain pairs, packed.
pub(crate) mod plain_pairs_field {
    use super::*;

    pub fn serialize<S: Serializer>(pairs: &[ProviderReputation], s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<&ProviderReputation> = pairs.iter().collect();
        plain_pairs_text(&pairs).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<ProviderReputation>, D::Error> {
        let text = String::deserialize(d)?;
        read_plain_pairs_text(&text)
            .map_err(|e| serde::de::Error::custom(format!("packed healthy pairs: {e}")))
    }
}

/// For the tests of the largest pool the CRD allows: its providers, every
/// builtin provider and gateway, `other` and 16 declared providers.
#[cfg(test)]
pub(crate) fn largest_pool_providers() -> Vec<String> {
    use crate::vocab::{BUILTIN_GATEWAYS, BUILTIN_PROVIDERS, OTHER_PROVIDER};
    let mut providers: Vec<String> = BUILTIN_PROVIDERS
        .iter()
        .chain(BUILTIN_GATEWAYS.iter())
        .map(|p| p.to_string())
        .collect();
    providers.push(OTHER_PROVIDER.to_string());
    // Sixteen declared providers, named as a sender would name them.
    providers.extend(
        [
            "comcast",
            "orange",
            "gmx",
            "web-de",
            "t-online",
            "libero",
            "mail-ru",
            "yandex",
            "naver",
            "laposte",
            "free-fr",
            "bt-internet",
            "virgin-media",
            "fastmail",
            "zoho",
            "seznam",
        ]
        .map(String::from),
    );
    providers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IpStatus, PoolIp, SenderPool, SenderPoolStatus};

    fn ts(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    /// A full window: 16 one-minute buckets, every one with traffic (20 to
    /// 400 attempts a minute, up to 24,000 an hour for one IP and one
    /// provider), every third with refusals of both kinds.
    fn full_window(seed: i64, end: i64) -> Vec<WindowBucket> {
        (0..16)
            .map(|i| {
                let attempts = 20 + (seed * 37 + i * 101) % 380;
                let refused = if i % 3 == 0 { 1 + (seed + i) % 9 } else { 0 };
                WindowBucket {
                    start: ts(end - (15 - i) * 60),
                    attempts,
                    delivered: attempts - refused * 2,
                    ip_blocklisted: refused,
                    ip_rate_limited: refused,
                    complaints: 0,
                }
            })
            .collect()
    }

    fn pair(provider: &str, window: Vec<WindowBucket>) -> ProviderReputation {
        ProviderReputation {
            window,
            ..ProviderReputation::first_seen(provider, ts(1_765_000_000))
        }
    }

    #[test]
    fn windows_and_plain_pairs_read_back_as_written() {
        let end = 1_765_090_020;
        let mut gappy = full_window(3, end);
        gappy.remove(4);
        gappy.remove(9);
        for window in [Vec::new(), full_window(1, end), gappy] {
            assert_eq!(read_window_text(&window_text(&window)).unwrap(), window);
            let mut recovered = pair("yahoo", window.clone());
            recovered.reason = "Recovered".into();
            recovered.last_evidence = Some("20 clean deliveries".into());
            recovered.block_count = 3;
            recovered.hold_down_seconds = Some(14_400);
            let mut warmed = pair("google", window.clone());
            warmed.reason = "WarmupComplete".into();
            warmed.last_evidence = Some("20 clean deliveries".into());
            assert!(is_plain(&recovered) && is_plain(&warmed));
            let pairs = [
                pair("microsoft", window.clone()),
                recovered,
                warmed,
                pair("example-isp", window),
            ];
            let refs: Vec<&ProviderReputation> = pairs.iter().collect();
            assert_eq!(
                read_plain_pairs_text(&plain_pairs_text(&refs)).unwrap(),
                pairs.to_vec()
            );
        }
        // Out of order (never written by the engine) still reads back.
        let mut shuffled = full_window(2, end);
        shuffled.swap(0, 5);
        assert_eq!(read_window_text(&window_text(&shuffled)).unwrap(), shuffled);
    }

    #[test]
    fn a_window_with_complaints_reads_back_and_one_without_keeps_the_first_format() {
        let end = 1_765_090_020;
        let plain = full_window(4, end);
        let version = |text: &str| URL_SAFE_NO_PAD.decode(text).unwrap()[0];
        assert_eq!(version(&window_text(&plain)), PACKED_VERSION);
        let mut with_complaints = plain.clone();
        with_complaints[3].complaints = 2;
        with_complaints[15].complaints = 1;
        // A complaint can arrive in a bucket that delivered nothing.
        with_complaints.push(WindowBucket {
            start: ts(end + 60),
            attempts: 0,
            delivered: 0,
            ip_blocklisted: 0,
            ip_rate_limited: 0,
            complaints: 5,
        });
        let text = window_text(&with_complaints);
        assert_eq!(version(&text), PACKED_COMPLAINTS_VERSION);
        assert_eq!(read_window_text(&text).unwrap(), with_complaints);
        for cut in [1, text.len() / 2, text.len() - 1] {
            assert!(read_window_text(&text[..cut]).is_err(), "cut at {cut}");
        }
        assert!(!is_plain(&pair("yahoo", with_complaints)));
    }

    #[test]
    fn a_damaged_packed_string_is_an_error_not_a_panic() {
        let text = window_text(&full_window(1, 1_765_090_020));
        for cut in [1, 5, text.len() / 2, text.len() - 1] {
            assert!(read_window_text(&text[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_window_text("not packed!").is_err());
        assert!(read_plain_pairs_text("AwAA").is_err(), "a newer format");
        let pairs = [pair("google", full_window(1, 1_765_090_020))];
        let refs: Vec<&ProviderReputation> = pairs.iter().collect();
        let text = plain_pairs_text(&refs);
        for cut in [1, 5, text.len() / 2, text.len() - 1] {
            assert!(read_plain_pairs_text(&text[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_window_written_as_a_list_by_an_older_version_still_reads() {
        let old = serde_json::json!({
            "provider": "microsoft", "state": "Blocked", "since": "2026-12-07T05:00:00Z",
            "reason": "ConclusiveBlockReply", "allowancePercent": 0, "blockCount": 1,
            "window": [{"start": "2026-12-07T05:00:00Z", "attempts": 10, "delivered": 7, "ipBlocklisted": 3}]
        });
        let pair: ProviderReputation = serde_json::from_value(old).unwrap();
        assert_eq!(pair.window.len(), 1);
        assert_eq!(pair.window[0].ip_blocklisted, 3);
        let written = serde_json::to_value(&pair).unwrap();
        assert!(written["window"].is_string(), "{written}");
        let again: ProviderReputation = serde_json::from_value(written).unwrap();
        assert_eq!(again, pair);
        // A plain pair an older version listed in `reputation` reads too.
        let ip: IpStatus = serde_json::from_value(serde_json::json!({
            "address": "203.0.113.10",
            "reputation": [{"provider": "google", "state": "Healthy", "since": "2026-12-07T05:00:00Z",
                "reason": "FirstSeen", "allowancePercent": 100}]
        }))
        .unwrap();
        assert_eq!(ip.reputation.len(), 1);
        let written = serde_json::to_value(&ip).unwrap();
        assert!(written.get("reputation").is_none(), "{written}");
        assert!(written["healthyPairs"].is_string(), "{written}");
        assert_eq!(serde_json::from_value::<IpStatus>(written).unwrap(), ip);
    }

    /// The CRD's largest pool: 256 IPs, each with a pair for every builtin
    /// provider and gateway, `other` and 16 declared providers, every
    /// window full; one pair in sixteen blocked with its evidence, a quarter
    /// of those with two DNSBL claims. `warmed`: every healthy pair has been
    /// through a warm-up (reason and evidence), one in four recovered from a
    /// past block (block count, hold-down), as a pool running for months is.
    fn largest_pool(warmed: bool) -> SenderPool {
        let end = 1_765_090_020;
        let providers = largest_pool_providers();
        let mut ips = Vec::new();
        let mut spec_ips = Vec::new();
        for n in 0..256i64 {
            let address = format!("203.0.{}.{}", 100 + n / 200, 10 + n % 200);
            spec_ips.push(PoolIp {
                address: address.clone(),
                warmup_start: None,
                override_: None,
                node_selector: None,
                helo_name: Some(format!("mta{n}.mail.example.net")),
            });
            let mut status = IpStatus::new(address.clone());
            status.ready_replicas = 2;
            status.desired_replicas = 2;
            for (k, provider) in providers.iter().enumerate() {
                let mut p = pair(provider, full_window(n * 31 + k as i64, end));
                if warmed {
                    p.reason = "WarmupComplete".into();
                    p.last_evidence = Some("warm-up schedule of 14 days ended".into());
                    if k % 4 == 0 {
                        p.reason = "Recovered".into();
                        p.last_evidence =
                            Some("20 clean deliveries at the last recovery step".into());
                        p.block_count = 1;
                        p.hold_down_seconds = Some(3600);
                    }
                }
                if (n as usize + k).is_multiple_of(16) {
                    p.state = ReputationState::Blocked;
                    p.reason = "ConclusiveBlockReply".into();
                    p.allowance_percent = 0;
                    p.hold_down_seconds = Some(7200);
                    p.block_count = 2;
                    p.next_step_at = Some(ts(end + 3600));
                    p.last_evidence = Some(format!(
                        "550 5.7.606 Access denied, banned sending IP [{address}]. To request removal from this list please visit https://sender.office.com/ and follow the directions."
                    ));
                    let claims = if (n as usize + k).is_multiple_of(64) {
                        2
                    } else {
                        0
                    };
                    p.dnsbl_claims = (0..claims)
                        .map(|r| crate::api::DnsblClaim {
                            zone: Some("zen.spamhaus.org".into()),
                            receiver: format!("receiver{r}.example.org"),
                            at: ts(end - 60),
                            reply: format!("554 5.7.1 Service unavailable; Client host [{address}] blocked using zen.spamhaus.org; https://check.spamhaus.org/"),
                        })
                        .collect();
                }
                status.reputation.push(p);
            }
            ips.push(status);
        }
        let mut pool: SenderPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool",
            "metadata": {"name": "bulk", "namespace": "mail"},
            "spec": {
                "ips": [{"address": "203.0.113.10"}],
                "template": {"spec": {"containers": [{"name": "postfix", "image": "registry.example.net/mail/postfix-sender:3.7"}]}}
            }
        }))
        .unwrap();
        pool.spec.ips = spec_ips;
        pool.status = Some(SenderPoolStatus {
            ip_count: 256,
            ips,
            ..SenderPoolStatus::default()
        });
        pool
    }

    #[test]
    fn the_largest_pool_serialises_under_one_mebibyte_and_loses_nothing() {
        for warmed in [false, true] {
            largest_pool_fits(largest_pool(warmed), warmed);
        }
    }

    fn largest_pool_fits(pool: SenderPool, warmed: bool) {
        let pairs: usize = pool
            .status
            .as_ref()
            .unwrap()
            .ips
            .iter()
            .map(|ip| ip.reputation.len())
            .sum();
        assert_eq!(pairs, 256 * 27);
        let bytes = serde_json::to_vec(&pool).unwrap();
        println!(
            "largest pool (warmed: {warmed}): {} bytes ({:.0} KiB) for {pairs} pairs",
            bytes.len(),
            bytes.len() as f64 / 1024.0
        );
        assert!(
            bytes.len() < 1024 * 1024,
            "the largest pool is {} bytes; etcd refuses objects over 1.5 MiB and the status must stay well under 1 MiB",
            bytes.len()
        );
        let read: SenderPool = serde_json::from_slice(&bytes).unwrap();
        let mut want = pool.status.clone().unwrap();
        for ip in &mut want.ips {
            ip.reputation.sort_by(|a, b| a.provider.cmp(&b.provider));
        }
        assert_eq!(read.status.unwrap(), want);
    }
}
