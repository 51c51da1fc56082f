//! Classifier speed: parse and classify 100,000 generated Postfix delivery lines (a
//! realistic mix of delivered, deferred and bounced across providers, Microsoft 365
//! tenants and the incident's block included) and report lines per second. Target:
//! over 1,000,000 lines/s on one core (docs/CLASSIFIER.md).
//!
//! `cargo bench --bench classify` (add `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailfleet::reputation::classifier::Classifier;
use mailfleet::reputation::postfix_log::classify_log_line;

const LINES: usize = 100_000;

/// A fixed-seed xorshift, so every run measures the same lines.
struct Lines(u64);

impl Lines {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn queue_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjkmnpqrstvwxyz";
        (0..14)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

/// (recipient domain, MX host, provider key)
const DESTINATIONS: [(&str, &str, &str); 12] = [
    (
        "hotmail.com",
        "hotmail-com.olc.protection.outlook.com",
        "microsoft",
    ),
    (
        "hotmail.co.jp",
        "hotmail-com.olc.protection.outlook.com",
        "microsoft",
    ),
    (
        "outlook.jp",
        "outlook-com.olc.protection.outlook.com",
        "microsoft",
    ),
    (
        "acclaim.jp",
        "acclaim-jp.mail.protection.outlook.com",
        "microsoft",
    ),
    ("gmail.com", "gmail-smtp-in.l.google.com", "google"),
    ("gmail.com", "alt1.gmail-smtp-in.l.google.com", "google"),
    ("example-corp.co.jp", "aspmx.l.google.com", "google"),
    ("yahoo.com", "mta6.am0.yahoodns.net", "yahoo"),
    ("icloud.com", "mx01.mail.icloud.com", "apple"),
    ("yahoo.co.jp", "mx1.mail.yahoo.co.jp", "other"),
    ("docomo.ne.jp", "mfsmax.docomo.ne.jp", "other"),
    ("example.org", "mx.example.org", "other"),
];

fn failure(rng: &mut Lines, provider: &str) -> (&'static str, &'static str, &'static str) {
    // (dsn, status, reply)
    let microsoft = [
        ("5.7.606", "bounced", "550 5.7.606 Access denied, banned sending IP [203.0.113.10]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to  http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430) [AM4PEPF00027A5F.eurprd04.prod.outlook.com 2021-11-05T08:10:01.391Z 08D9A0B6D0C1E2F3]"),
        ("4.7.606", "deferred", "550 5.7.606 Access denied, banned sending IP [203.0.113.10]. To request removal from this list please visit https://sender.office.com/ and follow the directions. AS(1430) [AM4PEPF00027A5F.eurprd04.prod.outlook.com]"),
        ("4.7.650", "deferred", "451 4.7.650 The mail server [203.0.113.11] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775) [BN8NAM12FT063.eop-nam12.prod.protection.outlook.com]"),
        ("5.1.10", "bounced", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
    ];
    let google = [
        ("4.7.0", "deferred", "421-4.7.0 [203.0.113.12      15] Our system has detected an unusual rate of 421-4.7.0 unsolicited mail originating from your IP address. To protect our 421-4.7.0 users from spam, mail sent from your IP address has been temporarily 421-4.7.0 rate limited. 421 4.7.0  https://support.google.com/mail/?p=UnsolicitedRateLimitError a1-20020a170902 - gsmtp"),
        ("5.1.1", "bounced", "550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 double-checking the recipient's email address for typos or 550-5.1.1 unnecessary spaces. 550 5.1.1  https://support.google.com/mail/?p=NoSuchUser x - gsmtp"),
        ("4.2.2", "deferred", "452-4.2.2 The email account that you tried to reach is over quota. 452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp x - gsmtp"),
    ];
    let yahoo = [
        ("4.7.0", "deferred", "421 4.7.0 [TSS04] Messages from 203.0.113.13 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"),
        ("5.7.2", "bounced", "553 5.7.2 [TSS09] All messages from 203.0.113.13 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes"),
    ];
    let apple = [("4.7.1", "deferred", "421 4.7.1 Messages to taro@icloud.com deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137")];
    let other = [
        ("5.1.1", "bounced", "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table"),
        ("4.7.1", "deferred", "451 4.7.1 <taro@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.org.html"),
        ("5.7.1", "bounced", "554 5.7.1 Service unavailable; Client host [203.0.113.14] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/203.0.113.14"),
        ("5.0.0", "bounced", "550 Requested action not taken: mailbox unavailable"),
    ];
    let table: &[(&str, &str, &str)] = match provider {
        "microsoft" => &microsoft,
        "google" => &google,
        "yahoo" => &yahoo,
        "apple" => &apple,
        _ => &other,
    };
    table[(rng.next() % table.len() as u64) as usize]
}

fn generate(count: usize) -> Vec<String> {
    let mut rng = Lines(0x2021_1105_0810_0001);
    let users = [
        "taro",
        "hanako",
        "kikaku",
        "pr",
        "info",
        "press",
        "jiro.yamada",
        "news-desk",
    ];
    let mut lines = Vec::with_capacity(count);
    for i in 0..count {
        let (domain, mx, provider) =
            DESTINATIONS[(rng.next() % DESTINATIONS.len() as u64) as usize];
        let user = rng.pick(&users);
        let queue_id = rng.queue_id();
        let second = i % 60;
        let prefix = if i % 4 == 0 {
            format!(
                "2021-11-05T08:10:{second:02}.{:06}+09:00 sender-{} postfix-out/smtp[{}]:",
                i % 999_999,
                i % 8,
                1000 + i % 5000
            )
        } else {
            format!(
                "Nov  5 08:10:{second:02} sender-{} postfix/smtp[{}]:",
                i % 8,
                1000 + i % 5000
            )
        };
        let roll = rng.next() % 100;
        let line = if roll < 6 {
            format!("{prefix} {queue_id}: to=<{user}@{domain}>, relay=none, delay=30, delays=0.01/0/30/0, dsn=4.4.1, status=deferred (connect to {mx}[192.0.2.{}]:25: Connection timed out)", roll)
        } else if roll < 80 {
            format!("{prefix} {queue_id}: to=<{user}@{domain}>, relay={mx}[192.0.2.{roll}]:25, delay=0.91, delays=0.01/0.01/0.35/0.54, dsn=2.0.0, status=sent (250 2.0.0 OK  1636099802 x12si1234567pgh.123 - gsmtp)")
        } else {
            let (dsn, status, reply) = failure(&mut rng, provider);
            format!("{prefix} {queue_id}: to=<{user}@{domain}>, relay={mx}[192.0.2.{roll}]:25, delay=1.2, delays=0.1/0/0.6/0.5, dsn={dsn}, status={status} (host {mx}[192.0.2.{roll}] said: {reply} (in reply to RCPT TO command))")
        };
        lines.push(line);
    }
    lines
}

/// Non-delivery lines a real maillog interleaves (smtpd, cleanup, qmgr): these must
/// be skipped cheaply.
fn generate_noise(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 4 {
            0 => format!("Nov  5 08:10:01 sender-1 postfix/smtpd[{i}]: connect from app-{}.example.jp[10.0.0.{}]", i % 9, i % 250),
            1 => format!("Nov  5 08:10:01 sender-1 postfix/cleanup[{i}]: 4HmB2x0Z7Qz9v{}: message-id=<20211105.{i}@example.jp>", i % 10),
            2 => format!("Nov  5 08:10:01 sender-1 postfix/qmgr[{i}]: 4HmB2x0Z7Qz9v{}: from=<pr@example.jp>, size=3821, nrcpt=1 (queue active)", i % 10),
            _ => format!("Nov  5 08:10:01 sender-1 postfix/qmgr[{i}]: 4HmB2x0Z7Qz9v{}: removed", i % 10),
        })
        .collect()
}

fn bench_classify(c: &mut Criterion) {
    let classifier = Classifier::builtin();
    let lines = generate(LINES);
    let classified = lines
        .iter()
        .filter(|l| classify_log_line(&classifier, l).is_ok())
        .count();
    assert_eq!(classified, LINES, "every generated line is a delivery line");

    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(LINES as u64));
    group.bench_function("postfix_delivery_lines_100k", |b| {
        b.iter(|| {
            let mut blocked = 0usize;
            for line in &lines {
                if let Ok((_, verdict)) = classify_log_line(&classifier, black_box(line)) {
                    blocked += usize::from(verdict.conclusive);
                }
            }
            black_box(blocked)
        })
    });

    let noise = generate_noise(LINES);
    group.bench_function("skipped_maillog_lines_100k", |b| {
        b.iter(|| {
            noise
                .iter()
                .filter(|l| classify_log_line(&classifier, black_box(l)).is_err())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_classify);
criterion_main!(benches);
