//! Who the mail goes to: recipient domains with their MX hosts, grouped into
//! the shares a scenario sets. Which provider a domain belongs to is not written
//! here: the classifier decides it from the MX host and the domain, as it does
//! for real delivery results (a company domain on Microsoft 365 is Microsoft
//! only because of its MX host).

/// One recipient domain and the MX host that receives its mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain {
    pub name: &'static str,
    pub mx_host: &'static str,
}

/// Domains that receive one share of the mail, spread evenly over them.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationGroup {
    /// A label for people (`microsoft-365 tenants`).
    pub label: &'static str,
    /// Percent of all submitted mail.
    pub share_percent: f64,
    pub domains: &'static [Domain],
}

const fn d(name: &'static str, mx_host: &'static str) -> Domain {
    Domain { name, mx_host }
}

/// Microsoft's consumer domains named in INCIDENT.md.
pub const MICROSOFT_CONSUMER: &[Domain] = &[
    d("hotmail.com", "hotmail-com.olc.protection.outlook.com"),
    d("hotmail.co.jp", "hotmail-co-jp.olc.protection.outlook.com"),
    d("hotmail.co.uk", "hotmail-co-uk.olc.protection.outlook.com"),
    d("hotmail.fr", "hotmail-fr.olc.protection.outlook.com"),
    d("hotmail.it", "hotmail-it.olc.protection.outlook.com"),
    d("hotmail.nl", "hotmail-nl.olc.protection.outlook.com"),
    d("hotmail.co.th", "hotmail-co-th.olc.protection.outlook.com"),
    d("outlook.com", "outlook-com.olc.protection.outlook.com"),
    d("outlook.jp", "outlook-jp.olc.protection.outlook.com"),
    d("outlook.kr", "outlook-kr.olc.protection.outlook.com"),
    d("outlook.sa", "outlook-sa.olc.protection.outlook.com"),
    d("live.com", "live-com.olc.protection.outlook.com"),
    d("live.jp", "live-jp.olc.protection.outlook.com"),
    d("live.cn", "live-cn.olc.protection.outlook.com"),
    d("live.com.sg", "live-com-sg.olc.protection.outlook.com"),
    d("msn.com", "msn-com.olc.protection.outlook.com"),
];

/// Company domains that host their mail on Microsoft 365 (INCIDENT.md): their
/// names say nothing, their MX hosts do.
pub const MICROSOFT_365_TENANTS: &[Domain] = &[
    d("acclaim.jp", "acclaim-jp.mail.protection.outlook.com"),
    d(
        "albirex2006.com",
        "albirex2006-com.mail.protection.outlook.com",
    ),
    d(
        "hirabayashi.com",
        "hirabayashi-com.mail.protection.outlook.com",
    ),
    d("infoseek.jp", "infoseek-jp.mail.protection.outlook.com"),
    d("morishow.net", "morishow-net.mail.protection.outlook.com"),
    d("taswork.com", "taswork-com.mail.protection.outlook.com"),
];

pub const GOOGLE: &[Domain] = &[
    d("gmail.com", "gmail-smtp-in.l.google.com"),
    d("googlemail.com", "gmail-smtp-in.l.google.com"),
    d("newsroom.example", "aspmx.l.google.com"),
];

pub const YAHOO_JAPAN: &[Domain] = &[
    d("yahoo.co.jp", "mx.mail.yahoo.co.jp"),
    d("ybb.ne.jp", "mx.mail.yahoo.co.jp"),
];

pub const YAHOO: &[Domain] = &[
    d("yahoo.com", "mta5.am0.yahoodns.net"),
    d("aol.com", "mx-aol.mail.gm0.yahoodns.net"),
];

pub const APPLE: &[Domain] = &[
    d("icloud.com", "mx01.mail.icloud.com"),
    d("me.com", "mx02.mail.icloud.com"),
];

/// Mobile carriers, ISPs and companies that run their own mail servers.
pub const OTHER: &[Domain] = &[
    d("docomo.ne.jp", "mfsmax.docomo.ne.jp"),
    d("ezweb.ne.jp", "lsean.ezweb.ne.jp"),
    d("nifty.com", "mx.nifty.com"),
    d("pressdesk.example", "mx1.pressdesk.example"),
    d("editors.example", "mail.editors.example"),
];

/// The recipient mix of a Japanese press-release distributor, with Microsoft
/// (consumer domains and Microsoft 365 tenants together) at `microsoft_percent`
/// of all mail and `tenant_share` of Microsoft's part on Microsoft 365 tenants.
pub fn press_release_mix(microsoft_percent: f64, tenant_share: f64) -> Vec<DestinationGroup> {
    let fixed = [
        ("google (Gmail and Google Workspace)", 18.0, GOOGLE),
        ("yahoo-japan", 9.0, YAHOO_JAPAN),
        ("yahoo", 0.6, YAHOO),
        ("apple", 1.4, APPLE),
    ];
    let fixed_total: f64 = fixed.iter().map(|(_, s, _)| s).sum();
    let mut groups = vec![
        DestinationGroup {
            label: "microsoft consumer (hotmail, outlook, live, msn)",
            share_percent: microsoft_percent * (1.0 - tenant_share),
            domains: MICROSOFT_CONSUMER,
        },
        DestinationGroup {
            label: "microsoft 365 tenants (recognised by MX host)",
            share_percent: microsoft_percent * tenant_share,
            domains: MICROSOFT_365_TENANTS,
        },
    ];
    groups.extend(
        fixed
            .iter()
            .map(|(label, share, domains)| DestinationGroup {
                label,
                share_percent: *share,
                domains,
            }),
    );
    groups.push(DestinationGroup {
        label: "other (carriers, ISPs, companies)",
        share_percent: (100.0 - microsoft_percent - fixed_total).max(0.0),
        domains: OTHER,
    });
    groups
}
