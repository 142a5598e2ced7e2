//! URL helpers: query-string forced variations and URL targeting
//! (`urlPatterns`), for callers that pass the page URL in the context.

use crate::js;
use crate::model::Diags;
use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// `getQueryStringOverride(id, url, numVariations)`: the variation forced by
/// a `?<id>=<n>` query parameter, if it is a valid index.
pub fn get_query_string_override(id: &str, url: &str, num_variations: usize) -> Option<usize> {
    let search = url.split('?').nth(1)?;
    let search = search.split('#').next().unwrap_or("");
    if search.is_empty() {
        return None;
    }
    let value = search
        .split('&')
        .map(|kv| {
            let mut it = kv.splitn(3, '=');
            (it.next().unwrap_or(""), it.next())
        })
        .find(|(k, _)| *k == id)?
        .1?;
    let n = js::parse_int(value)?;
    if n >= 0 && (n as u64) < num_variations as u64 {
        Some(n as usize)
    } else {
        None
    }
}

/// A parsed absolute URL, just enough for URL targeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    pub scheme: String,
    pub host: String,
    pub path: String,
    pub search: String,
    pub hash: String,
}

impl ParsedUrl {
    /// Parses `url`, resolving it against `https://<base_host>` when it has
    /// no scheme/host.
    pub fn parse(url: &str, base_host: &str) -> ParsedUrl {
        let (scheme, rest) = match url.find("://") {
            Some(i)
                if url[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                    && i > 0 =>
            {
                (url[..i].to_ascii_lowercase(), &url[i + 3..])
            }
            _ => ("https".to_string(), url),
        };
        let (host, rest) = if url.contains("://") || url.starts_with("//") {
            let rest = rest.trim_start_matches("//");
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let mut host = rest[..end].to_ascii_lowercase();
            if let Some(at) = host.rfind('@') {
                host = host[at + 1..].to_string();
            }
            if (scheme == "https" && host.ends_with(":443"))
                || (scheme == "http" && host.ends_with(":80"))
            {
                host.truncate(host.rfind(':').unwrap_or(host.len()));
            }
            (host, &rest[end..])
        } else {
            (base_host.to_string(), rest)
        };
        let (before_hash, hash) = match rest.find('#') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (path, search) = match before_hash.find('?') {
            Some(i) => (&before_hash[..i], &before_hash[i..]),
            None => (before_hash, ""),
        };
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        ParsedUrl {
            scheme,
            host,
            path,
            search: if search == "?" {
                String::new()
            } else {
                search.to_string()
            },
            hash: if hash == "#" {
                String::new()
            } else {
                hash.to_string()
            },
        }
    }

    pub fn href(&self) -> String {
        format!(
            "{}://{}{}{}{}",
            self.scheme, self.host, self.path, self.search, self.hash
        )
    }

    pub fn params(&self) -> Vec<(String, String)> {
        self.search
            .trim_start_matches('?')
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let mut it = kv.splitn(2, '=');
                (
                    decode(it.next().unwrap_or("")),
                    decode(it.next().unwrap_or("")),
                )
            })
            .collect()
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug)]
enum PatternKind {
    Simple {
        host: Regex,
        path: Regex,
        hash: Option<Regex>,
        params: Vec<(String, Regex)>,
    },
    Regex(Regex),
    /// Unknown type or invalid pattern: never matches.
    Never,
}

/// One entry of an experiment's `urlPatterns`.
#[derive(Debug)]
pub(crate) struct UrlPattern {
    include: bool,
    kind: PatternKind,
}

fn part_regex(pattern: &str, is_path: bool) -> Option<Regex> {
    let mut escaped = regex::escape(pattern).replace("_____", ".*");
    if is_path {
        let trimmed = escaped.strip_prefix('/').unwrap_or(&escaped);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        escaped = format!("/?{trimmed}/?");
    }
    RegexBuilder::new(&format!("^{escaped}$"))
        .case_insensitive(true)
        .build()
        .ok()
}

impl UrlPattern {
    pub fn parse_list(v: &Value, d: &mut Diags) -> Vec<UrlPattern> {
        let Value::Array(list) = v else {
            d.report("urlPatterns", "expected an array");
            return Vec::new();
        };
        list.iter()
            .map(|p| {
                let include = !matches!(p.get("include"), Some(Value::Bool(false)));
                let pattern = p.get("pattern").and_then(Value::as_str).unwrap_or("");
                let kind = match p.get("type").and_then(Value::as_str) {
                    Some("regex") => match Regex::new(pattern) {
                        Ok(r) => PatternKind::Regex(r),
                        Err(_) => {
                            d.report("urlPatterns", "invalid regular expression");
                            PatternKind::Never
                        }
                    },
                    Some("simple") => Self::simple(pattern).unwrap_or(PatternKind::Never),
                    _ => {
                        d.report("urlPatterns", "unknown pattern type");
                        PatternKind::Never
                    }
                };
                UrlPattern { include, kind }
            })
            .collect()
    }

    fn simple(pattern: &str) -> Option<PatternKind> {
        // A bare host ("example.com/path") gets a scheme; `*` is a wildcard.
        let mut p = pattern.to_string();
        if let Some(dot) = p.find('.') {
            if !p[..dot].contains([':', '/', '?']) {
                p = format!("https://{p}");
            }
        }
        let p = p.replace('*', "_____");
        let expected = ParsedUrl::parse(&p, "_____");
        Some(PatternKind::Simple {
            host: part_regex(&expected.host, false)?,
            path: part_regex(&expected.path, true)?,
            hash: if expected.hash.is_empty() {
                None
            } else {
                Some(part_regex(&expected.hash, false)?)
            },
            params: expected
                .params()
                .into_iter()
                .map(|(k, v)| Some((k, part_regex(&v, false)?)))
                .collect::<Option<Vec<_>>>()?,
        })
    }

    fn matches(&self, url: &ParsedUrl) -> bool {
        match &self.kind {
            PatternKind::Never => false,
            PatternKind::Regex(r) => {
                let href = url.href();
                r.is_match(&href) || r.is_match(&format!("{}{}{}", url.path, url.search, url.hash))
            }
            PatternKind::Simple {
                host,
                path,
                hash,
                params,
            } => {
                if !host.is_match(&url.host) || !path.is_match(&url.path) {
                    return false;
                }
                if let Some(h) = hash {
                    if !h.is_match(&url.hash) {
                        return false;
                    }
                }
                let actual = url.params();
                params.iter().all(|(k, re)| {
                    let v = actual
                        .iter()
                        .find(|(ak, _)| ak == k)
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("");
                    re.is_match(v)
                })
            }
        }
    }
}

/// Whether two URLs point at the same page (ignoring the query string and
/// fragment), to avoid redirect loops.
pub(crate) fn same_page(a: &str, b: &str) -> bool {
    let (pa, pb) = (ParsedUrl::parse(a, "_"), ParsedUrl::parse(b, "_"));
    pa.host == pb.host && pa.path.trim_end_matches('/') == pb.path.trim_end_matches('/')
}

/// Adds the query parameters of `current` that `target` does not have to
/// `target` (`mergeQueryStrings`).
pub(crate) fn merge_query_strings(current: &str, target: &str) -> String {
    let cur = ParsedUrl::parse(current, "_");
    let tgt = ParsedUrl::parse(target, "_");
    let existing: Vec<String> = tgt.params().into_iter().map(|(k, _)| k).collect();
    let mut search = tgt.search.clone();
    for kv in cur
        .search
        .trim_start_matches('?')
        .split('&')
        .filter(|kv| !kv.is_empty())
    {
        let key = decode(kv.split('=').next().unwrap_or(""));
        if existing.contains(&key) {
            continue;
        }
        search.push(if search.is_empty() { '?' } else { '&' });
        search.push_str(kv);
    }
    let (before_hash, hash) = match target.find('#') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    let base = before_hash.split('?').next().unwrap_or(before_hash);
    format!("{base}{search}{hash}")
}

/// `isURLTargeted(url, patterns)`.
pub(crate) fn is_url_targeted(url: &str, patterns: &[UrlPattern]) -> bool {
    if patterns.is_empty() {
        return false;
    }
    let parsed = ParsedUrl::parse(url, "_");
    let mut has_include = false;
    let mut included = false;
    for p in patterns {
        let m = p.matches(&parsed);
        if !p.include {
            if m {
                return false;
            }
        } else {
            has_include = true;
            if m {
                included = true;
            }
        }
    }
    included || !has_include
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_string() {
        assert_eq!(
            get_query_string_override("t", "http://x.com?a=1&t=1#x", 2),
            Some(1)
        );
        assert_eq!(
            get_query_string_override("t", "http://x.com??&&&?#", 2),
            None
        );
        assert_eq!(get_query_string_override("t", "http://x.com?t=2", 2), None);
    }

    #[test]
    fn simple_patterns() {
        let mut out = Vec::new();
        let mut d = Diags {
            out: &mut out,
            path: "e".into(),
        };
        let pats = UrlPattern::parse_list(
            &json!([{"type": "simple", "include": true, "pattern": "http://www.example.com/home"}]),
            &mut d,
        );
        assert!(is_url_targeted("http://www.example.com/home?x=1", &pats));
        assert!(is_url_targeted("https://www.example.com/home/", &pats));
        assert!(!is_url_targeted("http://www.example.com/other", &pats));
        let pats = UrlPattern::parse_list(
            &json!([{"type": "simple", "pattern": "/blog/*"}, {"type": "regex", "include": false, "pattern": "draft"}]),
            &mut d,
        );
        assert!(is_url_targeted("https://a.com/blog/post", &pats));
        assert!(!is_url_targeted("https://a.com/blog/draft-1", &pats));
        assert!(out.is_empty(), "{out:?}");
    }
}
