//! A small ClickHouse HTTP client on the hyper client already in the tree (no new dependency).
//!
//! ClickHouse's HTTP interface takes the statement as the `query` URL parameter or as the POST body; data for an
//! `INSERT` follows the statement in the body. A failed statement answers with a non-200 status and ClickHouse's
//! message (`Code: 62, e.displayText() = DB::Exception: Syntax error …`), which [`ClickHouseError::Server`]
//! carries unchanged, with the start of the statement that failed.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::time::Duration;

/// Why a ClickHouse call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// The URL given to [`Client::new`] is not `http://host:port`.
    #[error("ClickHouse URL `{url}`: {message}")]
    Url { url: String, message: String },
    /// ClickHouse could not be reached, or the connection broke.
    #[error("ClickHouse at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// No complete answer within the client's timeout ([`Client::with_timeout`]).
    #[error("ClickHouse at {url} did not answer `{statement}` within {seconds} s")]
    Timeout {
        url: String,
        statement: String,
        seconds: u64,
    },
    /// ClickHouse refused the statement; `message` is its own text.
    #[error("ClickHouse answered {status} to `{statement}`: {message}")]
    Server {
        status: u16,
        statement: String,
        message: String,
    },
    /// The answer did not have the expected shape.
    #[error("ClickHouse's answer to `{statement}` could not be read: {message}")]
    Decode { statement: String, message: String },
}

/// A ClickHouse server reached over HTTP. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Client {
    url: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    user: Option<(String, String)>,
    timeout: Duration,
}

/// How long a statement may take by default, answer included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest statement text ClickHouse accepts from this client (its default, 256 KiB, is less than an insight over
/// ten thousand hour buckets needs: each bucket boundary is a constant in the statement).
const MAX_QUERY_SIZE: usize = 16 << 20;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.url).finish()
    }
}

/// At most this much of a statement is repeated in an error.
const STATEMENT_IN_ERRORS: usize = 300;

fn excerpt(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(STATEMENT_IN_ERRORS) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

impl Client {
    /// A client of the server at `url` (`http://127.0.0.1:8123`; a trailing `/` is allowed). Plain HTTP only: a
    /// TLS-terminating proxy in front of a remote ClickHouse is the deployment's job.
    pub fn new(url: &str) -> Result<Client, ClickHouseError> {
        let trimmed = url.trim_end_matches('/');
        let bad = |message: &str| ClickHouseError::Url {
            url: url.to_string(),
            message: message.to_string(),
        };
        let rest = trimmed
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http://"))?;
        if rest.is_empty() || rest.contains('/') || rest.contains('?') {
            return Err(bad("must be http://host:port, without a path"));
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Client {
            url: trimmed.to_string(),
            http,
            user: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Gives up on a statement (connection, execution and answer) after `timeout` (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Authenticates as `user` (ClickHouse's `X-ClickHouse-User` / `X-ClickHouse-Key` headers).
    pub fn with_user(mut self, user: &str, password: &str) -> Client {
        self.user = Some((user.to_string(), password.to_string()));
        self
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `body` to `/?query=…` (the statement in the URL when `query` is given, else the body is the
    /// statement) and returns the answer's body.
    async fn post(
        &self,
        query: Option<&str>,
        body: Bytes,
        shown: &str,
    ) -> Result<Bytes, ClickHouseError> {
        let uri = match query {
            Some(q) => format!("{}/?query={}", self.url, percent_encode(q)),
            None => format!("{}/?max_query_size={MAX_QUERY_SIZE}", self.url),
        };
        let mut req = Request::builder().method(Method::POST).uri(uri);
        if let Some((user, key)) = &self.user {
            req = req
                .header("X-ClickHouse-User", user)
                .header("X-ClickHouse-Key", key);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClickHouseError::Url {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        let unreachable = |e: &dyn std::fmt::Display| ClickHouseError::Unreachable {
            url: self.url.clone(),
            message: e.to_string(),
        };
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| unreachable(&e))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            Ok::<_, ClickHouseError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClickHouseError::Timeout {
                url: self.url.clone(),
                statement: excerpt(shown),
                seconds: self.timeout.as_secs(),
            })??;
        if !status.is_success() {
            return Err(ClickHouseError::Server {
                status: status.as_u16(),
                statement: excerpt(shown),
                message: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        Ok(bytes)
    }

    /// Runs a statement that returns nothing to read (DDL, `INSERT … SELECT`).
    pub async fn execute(&self, sql: &str) -> Result<(), ClickHouseError> {
        self.post(None, Bytes::from(sql.to_string()), sql).await?;
        Ok(())
    }

    /// Runs a `SELECT` and returns its rows as text fields (`FORMAT TabSeparated` is appended; fields are
    /// unescaped).
    pub async fn query_rows(&self, sql: &str) -> Result<Vec<Vec<String>>, ClickHouseError> {
        let full = format!("{sql}\nFORMAT TabSeparated");
        let body = self.post(None, Bytes::from(full), sql).await?;
        let text = std::str::from_utf8(&body).map_err(|e| ClickHouseError::Decode {
            statement: excerpt(sql),
            message: e.to_string(),
        })?;
        Ok(text
            .lines()
            .map(|line| line.split('\t').map(unescape_tsv).collect())
            .collect())
    }

    /// Runs a `SELECT` and returns ClickHouse's `FORMAT JSON` document (`meta`, `data`, `rows`, …).
    pub async fn query_json(&self, sql: &str) -> Result<serde_json::Value, ClickHouseError> {
        let full = format!("{sql}\nFORMAT JSON");
        let body = self.post(None, Bytes::from(full), sql).await?;
        serde_json::from_slice(&body).map_err(|e| ClickHouseError::Decode {
            statement: excerpt(sql),
            message: e.to_string(),
        })
    }

    /// Inserts a batch into `table` (a quoted, qualified name such as `` `db`.`events` ``) with
    /// `FORMAT JSONEachRow`: one JSON object per row, in one request. An empty batch sends nothing.
    pub async fn insert<T: Serialize>(
        &self,
        table: &str,
        rows: &[T],
    ) -> Result<(), ClickHouseError> {
        if rows.is_empty() {
            return Ok(());
        }
        let statement = format!("INSERT INTO {table} FORMAT JSONEachRow");
        let mut body = Vec::with_capacity(rows.len() * 256);
        for r in rows {
            serde_json::to_writer(&mut body, r).map_err(|e| ClickHouseError::Decode {
                statement: statement.clone(),
                message: format!("a row does not serialize: {e}"),
            })?;
            body.push(b'\n');
        }
        self.post(Some(&statement), Bytes::from(body), &statement)
            .await?;
        Ok(())
    }
}

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a URL query value (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Undoes `TabSeparated` escaping (`\t`, `\n`, `\\`, …) of one field.
fn unescape_tsv(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_plain_http_without_a_path() {
        assert!(Client::new("http://127.0.0.1:8123/").is_ok());
        assert!(Client::new("https://ch:8443").is_err());
        assert!(Client::new("http://ch:8123/db").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded_and_fields_unescaped() {
        assert_eq!(
            percent_encode("INSERT INTO `a` x"),
            "INSERT%20INTO%20%60a%60%20x"
        );
        assert_eq!(unescape_tsv("a\\tb\\\\c\\n"), "a\tb\\c\n");
    }

    #[test]
    fn errors_show_the_start_of_the_statement_on_one_line() {
        let long = format!("SELECT\n  {}", "x, ".repeat(200));
        let e = excerpt(&long);
        assert!(e.starts_with("SELECT x, x,"));
        assert!(e.ends_with('…'));
        assert!(!e.contains('\n'));
    }
}
