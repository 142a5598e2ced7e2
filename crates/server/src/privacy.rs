//! Privacy at ingestion: what is kept of IP addresses, and which properties are scrubbed.
//!
//! - `capture_ip` (`--capture-ip`): `truncated` (the default) keeps the network part only — the last octet of an
//!   IPv4 address zeroed (`203.0.113.0`), an IPv6 address cut to its first 48 bits (`2001:db8:1::`); `full` keeps the
//!   address; `off` keeps none. It applies to the `$ip` capture adds from the connection *and* to an `$ip` the
//!   client sent, and to the addresses that referral-click and share-link fingerprints hash, so a click and the
//!   events of the same device still compare equal.
//! - `scrub_properties` (`--scrub-properties email,phone`): keys removed from every captured event's properties and
//!   from its `$set` / `$set_once` before anything is stored (so they reach neither the event log nor persons).

use std::net::IpAddr;

use serde_json::Value;

/// What is kept of IP addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpCapture {
    Full,
    #[default]
    Truncated,
    Off,
}

impl std::str::FromStr for IpCapture {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Self::Full),
            "truncated" => Ok(Self::Truncated),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "capture_ip must be full, truncated or off, not `{other}`"
            )),
        }
    }
}

impl IpCapture {
    /// The form of `ip` to keep (`None`: keep nothing). Text that is not an address is kept only with `full`.
    pub fn apply(self, ip: &str) -> Option<String> {
        match self {
            Self::Full => Some(ip.to_owned()),
            Self::Off => None,
            Self::Truncated => match ip.trim().parse::<IpAddr>().ok()? {
                IpAddr::V4(a) => {
                    let o = a.octets();
                    Some(std::net::Ipv4Addr::new(o[0], o[1], o[2], 0).to_string())
                }
                IpAddr::V6(a) => {
                    if let Some(v4) = a.to_ipv4_mapped() {
                        let o = v4.octets();
                        return Some(std::net::Ipv4Addr::new(o[0], o[1], o[2], 0).to_string());
                    }
                    let s = a.segments();
                    Some(std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string())
                }
            },
        }
    }
}

/// The ingestion privacy settings.
#[derive(Debug, Clone, Default)]
pub struct Privacy {
    pub capture_ip: IpCapture,
    /// Property keys removed at ingestion.
    pub scrub: Vec<String>,
}

impl Privacy {
    /// The properties (a JSON object as text) to store: the client's `$ip` kept as the policy says, scrubbed keys
    /// removed. Untouched (no parse) when there is nothing to do, the common case.
    pub fn clean(&self, properties: String) -> String {
        let has_ip = properties.contains("\"$ip\"");
        let ip_to_fix = has_ip && self.capture_ip != IpCapture::Full;
        let scrub =
            !self.scrub.is_empty() && self.scrub.iter().any(|k| properties.contains(k.as_str()));
        if !ip_to_fix && !scrub {
            return properties;
        }
        let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&properties) else {
            return properties;
        };
        if ip_to_fix {
            match map
                .get("$ip")
                .and_then(Value::as_str)
                .and_then(|ip| self.capture_ip.apply(ip))
            {
                Some(kept) => {
                    map.insert("$ip".into(), Value::String(kept));
                }
                None => {
                    map.remove("$ip");
                }
            }
        }
        for key in &self.scrub {
            map.remove(key);
            for nested in ["$set", "$set_once"] {
                if let Some(Value::Object(inner)) = map.get_mut(nested) {
                    inner.remove(key);
                }
            }
        }
        Value::Object(map).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_truncated_to_their_network() {
        let t = IpCapture::Truncated;
        assert_eq!(t.apply("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            t.apply("2001:db8:1:2:3:4:5:6").as_deref(),
            Some("2001:db8:1::")
        );
        assert_eq!(t.apply("::ffff:10.1.2.3").as_deref(), Some("10.1.2.0"));
        assert_eq!(t.apply("not an address"), None);
        assert_eq!(IpCapture::Off.apply("203.0.113.77"), None);
        assert_eq!(
            IpCapture::Full.apply("203.0.113.77").as_deref(),
            Some("203.0.113.77")
        );
        assert!("sometimes".parse::<IpCapture>().is_err());
    }

    #[test]
    fn properties_are_cleaned_only_when_needed() {
        let p = Privacy {
            capture_ip: IpCapture::Truncated,
            scrub: vec!["email".into()],
        };
        let untouched = r#"{"plan": "pro"}"#.to_owned();
        assert_eq!(p.clean(untouched.clone()), untouched);
        let cleaned: Value = serde_json::from_str(&p.clean(
            r#"{"$ip": "198.51.100.7", "email": "a@x.io", "$set": {"email": "a@x.io", "name": "A"}, "$set_once": {"email": "b"}}"#.into(),
        ))
        .unwrap();
        assert_eq!(
            cleaned,
            serde_json::json!({"$ip": "198.51.100.0", "$set": {"name": "A"}, "$set_once": {}})
        );
        let off = Privacy {
            capture_ip: IpCapture::Off,
            scrub: vec![],
        };
        assert_eq!(
            off.clean(r#"{"$ip": "1.2.3.4", "a": 1}"#.into()),
            r#"{"a":1}"#
        );
    }
}
