//! The mailbox providers as the simulated senders meet them: what they answer
//! (in their own words, as docs/SIMULATOR.md lists them), when they block an IP,
//! and when they delist it by themselves.

/// What a provider answers to one delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplyKind {
    Delivered,
    /// The provider's own block list holds the sending IP.
    Block,
    /// The provider checks a DNS block list that lists the sending IP.
    DnsblRefusal,
    /// Too much mail from this IP right now.
    RateLimited,
    /// A first attempt to a greylisting server.
    Greylisted,
}

impl ReplyKind {
    pub const ALL: [ReplyKind; 5] = [
        ReplyKind::Delivered,
        ReplyKind::Block,
        ReplyKind::DnsblRefusal,
        ReplyKind::RateLimited,
        ReplyKind::Greylisted,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Delivered => "delivered",
            ReplyKind::Block => "block",
            ReplyKind::DnsblRefusal => "dnsbl",
            ReplyKind::RateLimited => "rate_limited",
            ReplyKind::Greylisted => "greylisted",
        }
    }

    /// Whether the reply speaks about the IP's reputation (a block, a listing, a rate limit).
    pub fn is_reputation(self) -> bool {
        matches!(
            self,
            ReplyKind::Block | ReplyKind::DnsblRefusal | ReplyKind::RateLimited
        )
    }
}

/// One SMTP reply: `<code><sep><status> <text>`, `{ip}` standing for the sending IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTemplate {
    pub code: &'static str,
    /// `' '` for a one-line reply, `'-'` for the first line of a multi-line one.
    pub separator: char,
    /// The enhanced status code (`5.7.606`): what the status filter looks at.
    pub status: &'static str,
    pub text: &'static str,
}

impl ReplyTemplate {
    const fn new(code: &'static str, status: &'static str, text: &'static str) -> Self {
        ReplyTemplate {
            code,
            separator: ' ',
            status,
            text,
        }
    }

    pub fn render(&self, ip: &str) -> String {
        format!(
            "{}{}{} {}",
            self.code,
            self.separator,
            self.status,
            self.text.replace("{ip}", ip)
        )
    }
}

/// When a provider delists an IP on its own, and whether it lists it again.
#[derive(Clone, Debug, PartialEq)]
pub struct Delisting {
    /// The IP counts as quiet while its attempts over the last hour stay below
    /// this share of its usual hourly volume to the provider.
    pub low_share: f64,
    /// How long it must stay quiet before the provider delists it.
    pub quiet_seconds: i64,
    /// A touchy provider lists the IP again when its volume comes back too fast.
    pub relist: Option<Relist>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Relist {
    /// How long after a delisting the provider stays touchy.
    pub within_seconds: i64,
    /// The IP is listed again when its last hour's attempts exceed this share of
    /// its usual hourly volume.
    pub above_share: f64,
    /// At most this many relistings per IP.
    pub max_times: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalty {
    pub seconds: i64,
    pub factor: f64,
}

/// One provider's behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderModel {
    /// The provider name, as the classifier and the routes spell it.
    pub name: String,
    pub delivered: ReplyTemplate,
    /// The answer to an IP on the provider's block list, if it keeps one.
    pub block: Option<ReplyTemplate>,
    pub rate_limited: ReplyTemplate,
    pub dnsbl_refusal: ReplyTemplate,
    pub greylisted: ReplyTemplate,
    pub delisting: Delisting,
    /// Messages per hour the provider accepts from any one IP (the rest is
    /// answered `rate_limited`) at scale 1; it scales with the run's volume.
    /// `None`: no limit.
    pub per_ip_hourly_limit: Option<f64>,
    /// Once an IP went over its limit, the provider holds it to `factor` of the
    /// limit for `seconds` (a penalty, as Gmail's "temporarily rate limited").
    pub rate_limit_penalty: Option<Penalty>,
    /// Messages per hour accepted from a new IP on each day since its warm-up
    /// began; a new IP sending more gets `rate_limited`. Absolute, like the
    /// warm-up schedule it mirrors.
    pub new_ip_hourly_limits: Vec<f64>,
    /// Whether the provider refuses IPs that a DNS block list names.
    pub honours_dnsbl: bool,
    /// Share of first attempts answered `greylisted`.
    pub greylist_share: f64,
}

impl ProviderModel {
    pub fn reply(&self, kind: ReplyKind) -> &ReplyTemplate {
        match kind {
            ReplyKind::Delivered => &self.delivered,
            ReplyKind::Block => self.block.as_ref().unwrap_or(&self.dnsbl_refusal),
            ReplyKind::DnsblRefusal => &self.dnsbl_refusal,
            ReplyKind::RateLimited => &self.rate_limited,
            ReplyKind::Greylisted => &self.greylisted,
        }
    }

    /// The providers of the press-release mix with their documented replies.
    /// Every provider delists an IP once its last hour's volume has stayed under
    /// 12 % of its usual hourly volume for 3 h 15 min: INCIDENT.md's timeline
    /// (the volume through the IP reduced by 17:30, the last hour quiet about
    /// half an hour later, failures stopped at 21:15).
    pub fn standard(name: &str) -> ProviderModel {
        let dnsbl = ReplyTemplate::new(
            "554",
            "5.7.1",
            "Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/{ip}",
        );
        let greylisted = ReplyTemplate::new("451", "4.7.1", "Greylisted, please try again later");
        let delisting = Delisting {
            low_share: 0.12,
            quiet_seconds: 3 * 3600 + 15 * 60,
            relist: None,
        };
        let base = ProviderModel {
            name: name.to_string(),
            delivered: ReplyTemplate::new("250", "2.0.0", "OK queued as 4HmXYZ1abc"),
            block: None,
            rate_limited: ReplyTemplate::new(
                "421",
                "4.7.0",
                "Too many messages from [{ip}], try again later",
            ),
            dnsbl_refusal: dnsbl,
            greylisted,
            delisting,
            per_ip_hourly_limit: None,
            rate_limit_penalty: None,
            new_ip_hourly_limits: Vec::new(),
            honours_dnsbl: false,
            greylist_share: 0.0,
        };
        match name {
            "microsoft" => ProviderModel {
                delivered: ReplyTemplate::new("250", "2.6.0", "<sim@mailfleet> [InternalId=1] Queued mail for delivery"),
                block: Some(ReplyTemplate::new(
                    "550",
                    "5.7.606",
                    "Access denied, banned sending IP [{ip}]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to http://go.microsoft.com/fwlink/?LinkID=526655",
                )),
                rate_limited: ReplyTemplate::new(
                    "451",
                    "4.7.650",
                    "The mail server [{ip}] has been temporarily rate limited due to IP reputation.",
                ),
                ..base
            },
            "google" => ProviderModel {
                delivered: ReplyTemplate::new("250", "2.0.0", "OK 1636096200 a1si123456pgb.12 - gsmtp"),
                rate_limited: ReplyTemplate {
                    code: "421",
                    separator: '-',
                    status: "4.7.28",
                    text: "[{ip}] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
                },
                ..base
            },
            "yahoo" => ProviderModel {
                delivered: ReplyTemplate::new("250", "2.0.0", "ok dirdel"),
                block: Some(ReplyTemplate::new(
                    "553",
                    "5.7.2",
                    "[TSS09] All messages from {ip} will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
                )),
                rate_limited: ReplyTemplate::new(
                    "421",
                    "4.7.0",
                    "[TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
                ),
                honours_dnsbl: true,
                ..base
            },
            "apple" => ProviderModel {
                delivered: ReplyTemplate::new("250", "2.0.0", "Ok: queued as 4HmXYZ1abc"),
                block: Some(ReplyTemplate::new(
                    "550",
                    "5.7.0",
                    "Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip={ip}",
                )),
                rate_limited: ReplyTemplate::new("421", "4.7.1", "Deferred due to excessive volume from [{ip}], try again later"),
                honours_dnsbl: true,
                ..base
            },
            "other" => ProviderModel { honours_dnsbl: true, greylist_share: 0.003, ..base },
            _ => base,
        }
    }
}

/// A provider's view of one sending IP: its recent volume and whether it is listed.
#[derive(Clone, Debug)]
pub struct IpStanding {
    /// Attempts per slice over the last hour (a ring).
    recent: Vec<u64>,
    cursor: usize,
    last_hour: u64,
    /// The provider's idea of this IP's normal hourly volume (its history before
    /// the simulated period).
    pub usual_per_hour: f64,
    pub listed_since: Option<i64>,
    quiet_since: Option<i64>,
    pub last_delisted: Option<i64>,
    pub relists: u32,
    /// Rate-limit allowance left (a token bucket) and when it was last refilled.
    tokens: f64,
    refilled_at: Option<i64>,
    /// While set and in the future, the provider's penalty limit applies.
    pub penalty_until: Option<i64>,
}

/// What changed in a provider's listing of one IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListingChange {
    Delisted,
    Relisted,
}

impl IpStanding {
    pub fn new(slices_per_hour: usize, usual_per_hour: f64) -> Self {
        IpStanding {
            recent: vec![0; slices_per_hour.max(1)],
            cursor: 0,
            last_hour: 0,
            usual_per_hour,
            listed_since: None,
            quiet_since: None,
            last_delisted: None,
            relists: 0,
            tokens: 0.0,
            refilled_at: None,
            penalty_until: None,
        }
    }

    pub fn is_listed(&self) -> bool {
        self.listed_since.is_some()
    }

    pub fn list(&mut self, at: i64) {
        if self.listed_since.is_none() {
            self.listed_since = Some(at);
            self.quiet_since = None;
        }
    }

    /// Messages the rate limit lets through out of `wanted` at `now`, with
    /// `hourly_limit` refilling the bucket (at most five minutes' worth saved up).
    pub fn admit(&mut self, wanted: u64, hourly_limit: Option<f64>, now: i64) -> u64 {
        let Some(limit) = hourly_limit else {
            return wanted;
        };
        let ceiling = (limit * 300.0 / 3600.0).max(1.0);
        self.tokens = match self.refilled_at {
            Some(at) => (self.tokens + limit * (now - at).max(0) as f64 / 3600.0).min(ceiling),
            None => ceiling,
        };
        self.refilled_at = Some(now);
        let admitted = (self.tokens.floor().max(0.0) as u64).min(wanted);
        self.tokens -= admitted as f64;
        admitted
    }

    /// Records one slice's attempts (ending at `slice_end`) and applies the
    /// provider's delisting and relisting rules.
    pub fn close_slice(
        &mut self,
        attempts: u64,
        slice_end: i64,
        rules: &Delisting,
    ) -> Option<ListingChange> {
        self.last_hour = self.last_hour - self.recent[self.cursor] + attempts;
        self.recent[self.cursor] = attempts;
        self.cursor = (self.cursor + 1) % self.recent.len();
        let volume = self.last_hour as f64;
        if self.listed_since.is_some() {
            if volume < rules.low_share * self.usual_per_hour {
                let since = *self.quiet_since.get_or_insert(slice_end);
                if slice_end - since >= rules.quiet_seconds {
                    self.listed_since = None;
                    self.quiet_since = None;
                    self.last_delisted = Some(slice_end);
                    return Some(ListingChange::Delisted);
                }
            } else {
                self.quiet_since = None;
            }
            return None;
        }
        let relist = rules.relist.as_ref()?;
        let touchy = self
            .last_delisted
            .is_some_and(|at| slice_end - at <= relist.within_seconds);
        if touchy
            && self.relists < relist.max_times
            && volume > relist.above_share * self.usual_per_hour
        {
            self.relists += 1;
            self.list(slice_end);
            return Some(ListingChange::Relisted);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_ip() {
        let ms = ProviderModel::standard("microsoft");
        let text = ms.reply(ReplyKind::Block).render("203.0.113.13");
        assert!(
            text.starts_with("550 5.7.606 Access denied, banned sending IP [203.0.113.13]"),
            "{text}"
        );
        let google = ProviderModel::standard("google");
        assert!(google
            .reply(ReplyKind::RateLimited)
            .render("192.0.2.1")
            .starts_with("421-4.7.28 [192.0.2.1]"));
        assert_eq!(google.block, None);
        assert!(ReplyKind::Block.is_reputation() && !ReplyKind::Greylisted.is_reputation());
    }

    #[test]
    fn a_listed_ip_is_delisted_after_a_quiet_spell_only() {
        let rules = Delisting {
            low_share: 0.1,
            quiet_seconds: 3600,
            relist: None,
        };
        let mut ip = IpStanding::new(60, 100.0);
        ip.list(0);
        let mut t = 0;
        for _ in 0..180 {
            t += 60;
            assert_eq!(
                ip.close_slice(5, t, &rules),
                None,
                "300 per hour is not quiet"
            );
        }
        let mut delisted_at = None;
        for _ in 0..200 {
            t += 60;
            if ip.close_slice(0, t, &rules) == Some(ListingChange::Delisted) {
                delisted_at = Some(t);
                break;
            }
        }
        let at = delisted_at.expect("delisted once quiet");
        assert!(!ip.is_listed());
        // Quiet once the busy minutes have left the last hour (about an hour), then an hour more.
        assert!((10_800 + 6_600..=10_800 + 7_300).contains(&at), "{at}");
    }

    #[test]
    fn a_touchy_provider_relists_when_volume_comes_back() {
        let rules = Delisting {
            low_share: 0.1,
            quiet_seconds: 60,
            relist: Some(Relist {
                within_seconds: 7200,
                above_share: 0.5,
                max_times: 1,
            }),
        };
        let mut ip = IpStanding::new(60, 100.0);
        ip.list(0);
        assert_eq!(ip.close_slice(0, 60, &rules), None);
        assert_eq!(
            ip.close_slice(0, 120, &rules),
            Some(ListingChange::Delisted)
        );
        assert_eq!(
            ip.close_slice(100, 180, &rules),
            Some(ListingChange::Relisted)
        );
        assert!(ip.is_listed());
    }

    #[test]
    fn the_rate_limit_refills_per_slice() {
        let mut ip = IpStanding::new(60, 100.0);
        assert_eq!(ip.admit(1000, None, 0), 1000);
        let first = ip.admit(1000, Some(600.0), 0);
        assert_eq!(first, 50, "five minutes' worth is saved up at most");
        assert_eq!(ip.admit(1000, Some(600.0), 60), 10);
        assert_eq!(
            ip.admit(1000, Some(600.0), 3600),
            50,
            "an idle hour saves up five minutes' worth only"
        );
    }
}
