//! Privacy at ingestion: what is kept of IP addresses, and which properties are scrubbed.
//!
//! - `capture_ip` (`--capture-ip`): `truncated` (the default) keeps the network part only — the last octet of an
//!   IPv4 address zeroed (`203.0.113.0`), an IPv6 address cut to its first 48 bits (`2001:db8:1::`); `full` keeps the
//!   address; `off` keeps none. It applies to the `$ip` capture adds from the connection *and* to an `$ip` the
//!   client sent. Referral-click and share-link fingerprints always hash the truncated form, so a click and the
//!   events of the same device compare equal whatever a project keeps. A project's `ingestion` settings override
//!   these server-wide settings ([`Policy`]).
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

/// A project's ingestion policy: the server's settings with the project's overrides (`ingestion` in its settings).
#[derive(Debug, Clone)]
pub struct Policy {
    pub privacy: Privacy,
    /// Captured events per second (`0`: unlimited).
    pub capture_events_per_second: u32,
    /// Native API requests per second to the project (`0`: unlimited).
    pub api_requests_per_second: u32,
}

impl Policy {
    pub fn of(config: &crate::Config, ingestion: &Value) -> Policy {
        let mut p = Policy {
            privacy: config.privacy.clone(),
            capture_events_per_second: config.capture_events_per_second,
            api_requests_per_second: config.project_api_requests_per_second,
        };
        if let Some(mode) = ingestion
            .get("capture_ip")
            .and_then(Value::as_str)
            .and_then(|m| m.parse().ok())
        {
            p.privacy.capture_ip = mode;
        }
        if let Some(keys) = ingestion.get("scrub_properties").and_then(Value::as_array) {
            p.privacy.scrub = keys
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        if let Some(n) = ingestion
            .get("capture_events_per_second")
            .and_then(Value::as_u64)
        {
            p.capture_events_per_second = n.min(u64::from(u32::MAX)) as u32;
        }
        if let Some(n) = ingestion
            .get("api_requests_per_second")
            .and_then(Value::as_u64)
        {
            p.api_requests_per_second = n.min(u64::from(u32::MAX)) as u32;
        }
        p
    }
}

/// Validates a project's `ingestion` settings, by field.
pub fn check_ingestion(v: &Value) -> Vec<flywheel_query::FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: &str| {
        errors.push(flywheel_query::FieldError {
            field: format!("ingestion.{field}"),
            message: message.into(),
        })
    };
    let Some(o) = v.as_object() else {
        return vec![flywheel_query::FieldError {
            field: "ingestion".into(),
            message: "must be an object (capture_ip, scrub_properties, capture_events_per_second, \
                      api_requests_per_second)"
                .into(),
        }];
    };
    for (k, v) in o {
        match k.as_str() {
            "capture_ip" => {
                if v.as_str()
                    .and_then(|m| m.parse::<IpCapture>().ok())
                    .is_none()
                {
                    err(k, "must be full, truncated or off");
                }
            }
            "scrub_properties" => {
                let ok = v.as_array().is_some_and(|a| {
                    a.len() <= 100
                        && a.iter()
                            .all(|k| k.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 200))
                });
                if !ok {
                    err(k, "must be a list of at most 100 property names");
                }
            }
            "capture_events_per_second" | "api_requests_per_second" => {
                if v.as_u64().is_none_or(|n| n > u64::from(u32::MAX)) {
                    err(k, "must be a whole number (0: unlimited)");
                }
            }
            _ => err(
                k,
                "unknown field (capture_ip, scrub_properties, capture_events_per_second, api_requests_per_second)",
            ),
        }
    }
    errors
}

/// How long a project's policy is kept (changes through this node apply at once; other nodes' within this).
const POLICY_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Projects' policies, read from their settings and kept briefly.
#[derive(Default)]
pub struct Policies {
    entries: std::sync::RwLock<
        std::collections::HashMap<i64, (std::time::Instant, std::sync::Arc<Policy>)>,
    >,
}

impl Policies {
    /// The policy of a project.
    pub async fn get(
        &self,
        state: &crate::state::AppState,
        project_id: i64,
    ) -> Result<std::sync::Arc<Policy>, crate::error::ApiError> {
        if let Some((at, p)) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&project_id)
        {
            if at.elapsed() < POLICY_TTL {
                return Ok(p.clone());
            }
        }
        let ingestion = state
            .store
            .project_settings(project_id)
            .await?
            .map(|s| s.ingestion)
            .unwrap_or(Value::Null);
        let p = std::sync::Arc::new(Policy::of(&state.config, &ingestion));
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(project_id, (std::time::Instant::now(), p.clone()));
        Ok(p)
    }

    /// Forgets a project's policy (its settings changed).
    pub fn forget(&self, project_id: i64) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&project_id);
    }
}
