//! Referral fraud checks: signals and a risk score (0–100) per referral, computed when it qualifies (by then the
//! referee has signed up, so their email is known).
//!
//! | signal | points | when |
//! |---|---|---|
//! | `same_email` | 90 | referee and referrer emails are equal after normalisation (lower case, `+tag` and dots of the local part removed) |
//! | `cycle` | 80 | the referrer was (directly or up a chain of referrals) brought by the referee |
//! | `same_device` | 60 | the referee's click on the link, or one of the referee's recent events, came from the same IP address and user agent as one of the referrer's recent events (`$ip` with `$raw_user_agent` or `$user_agent`; compared as salted hashes) |
//! | `disposable_email` | 50 | the referee's email domain (or a parent domain) is on the disposable-domain list shipped with the binary |
//! | `similar_email` | 40 | same domain and local parts at most 2 edits apart (at least 5 characters) |
//! | `velocity` | 40 | the referrer's referrals attributed in the hour before this one reach the program's `velocity_per_hour` |
//!
//! The score is the sum, capped at 100. At the program's `fraud.reject_at` the referral is rejected; at
//! `fraud.hold_at` it is held for review (`POST …/referrals/{id}/approve|reject`). Self-referrals (the referrer's own
//! distinct id or person) are rejected when attributed.

use std::collections::HashSet;
use std::sync::OnceLock;

/// The list shipped with the binary (`data/disposable_email_domains.txt`, refreshed by
/// `scripts/update-disposable-domains`).
const DISPOSABLE: &str = include_str!("../data/disposable_email_domains.txt");

fn disposable() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        DISPOSABLE
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// An email as (local part without `+tag` and dots, domain), lower case; `None` when it is not an address.
pub fn normalize_email(email: &str) -> Option<(String, String)> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.rsplit_once('@')?;
    let local = local.split('+').next().unwrap_or_default().replace('.', "");
    let domain = domain.trim_end_matches('.');
    if local.is_empty() || !domain.contains('.') {
        return None;
    }
    Some((local, domain.to_owned()))
}

/// Whether the domain, or one of its parent domains, is disposable.
pub fn is_disposable(domain: &str) -> bool {
    let set = disposable();
    let mut d = domain;
    loop {
        if set.contains(d) {
            return true;
        }
        match d.split_once('.') {
            Some((_, parent)) if parent.contains('.') => d = parent,
            _ => return false,
        }
    }
}

/// Levenshtein distance, stopping early above `limit` (returns `limit + 1` then).
fn edits_within(a: &str, b: &str, limit: usize) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > limit {
        return limit + 1;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        if cur.iter().min().copied().unwrap_or(0) > limit {
            return limit + 1;
        }
        prev = cur;
    }
    prev[b.len()]
}

/// What is known about a referral when it is scored.
pub struct Facts<'a> {
    pub referee_email: Option<&'a str>,
    pub referrer_email: Option<&'a str>,
    /// The referrer was brought, up the chain, by the referee.
    pub cycle: bool,
    /// The referee used the referrer's device (same IP address and user agent).
    pub same_device: bool,
    /// The referrer's referrals attributed in the hour before this one.
    pub recent_referrals: u64,
    pub velocity_per_hour: u64,
}

/// The signals found and the score.
pub fn score(f: &Facts<'_>) -> (Vec<&'static str>, u64) {
    let mut signals = Vec::new();
    let referee = f.referee_email.and_then(normalize_email);
    let referrer = f.referrer_email.and_then(normalize_email);
    if let (Some(a), Some(b)) = (&referee, &referrer) {
        if a == b {
            signals.push("same_email");
        } else if a.1 == b.1
            && a.0.chars().count().min(b.0.chars().count()) >= 5
            && edits_within(&a.0, &b.0, 2) <= 2
        {
            signals.push("similar_email");
        }
    }
    if f.cycle {
        signals.push("cycle");
    }
    if f.same_device {
        signals.push("same_device");
    }
    if referee.as_ref().is_some_and(|(_, d)| is_disposable(d)) {
        signals.push("disposable_email");
    }
    if f.velocity_per_hour > 0 && f.recent_referrals >= f.velocity_per_hour {
        signals.push("velocity");
    }
    let points: u64 = signals
        .iter()
        .map(|s| match *s {
            "same_email" => 90,
            "cycle" => 80,
            "same_device" => 60,
            "disposable_email" => 50,
            _ => 40,
        })
        .sum();
    (signals, points.min(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(referee: &'a str, referrer: &'a str) -> Facts<'a> {
        Facts {
            referee_email: Some(referee),
            referrer_email: Some(referrer),
            cycle: false,
            same_device: false,
            recent_referrals: 0,
            velocity_per_hour: 10,
        }
    }

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            normalize_email(" Anna.Smith+promo@Example.com "),
            Some(("annasmith".into(), "example.com".into()))
        );
        assert_eq!(normalize_email("nope"), None);
        assert_eq!(normalize_email("a@localhost"), None);
    }

    #[test]
    fn the_list_is_shipped_and_parent_domains_count() {
        assert!(disposable().len() > 5_000);
        assert!(is_disposable("mailinator.com"));
        assert!(is_disposable("eu.mailinator.com"));
        assert!(!is_disposable("example.com"));
    }

    #[test]
    fn signals_add_up() {
        assert_eq!(
            score(&facts("a.nna+x@x.io", "anna@x.io")),
            (vec!["same_email"], 90)
        );
        assert_eq!(
            score(&facts("annab@x.io", "annas@x.io")).0,
            ["similar_email"]
        );
        assert_eq!(score(&facts("bob@x.io", "anna@x.io")), (vec![], 0));
        assert_eq!(
            score(&facts("annab@mailinator.com", "annas@mailinator.com")),
            (vec!["similar_email", "disposable_email"], 90)
        );
        let mut f = facts("bob@x.io", "anna@y.io");
        f.cycle = true;
        f.recent_referrals = 12;
        assert_eq!(score(&f), (vec!["cycle", "velocity"], 100));
        let mut f = facts("bob@x.io", "anna@y.io");
        f.same_device = true;
        assert_eq!(score(&f), (vec!["same_device"], 60));
        assert_eq!(edits_within("kitten", "sitting", 3), 3);
        assert_eq!(edits_within("abcdefgh", "zzzzzzzz", 2), 3);
    }
}
