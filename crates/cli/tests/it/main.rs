//! End-to-end tests of the `flywheel` binary: real processes, real sockets, real SDKs.

mod browser;
mod clients;
mod cohorts;
mod crash;
mod experiments;
mod generate;
mod insights;
mod process;
mod restart;
mod users;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flywheel");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub struct Keys {
    pub project_id: i64,
    pub project_key: String,
    pub personal_key: String,
}

pub fn init(dir: &Path) -> Keys {
    let out = Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Keys {
        project_id: v["project_id"].as_i64().unwrap(),
        project_key: v["project_api_key"].as_str().unwrap().to_owned(),
        personal_key: v["personal_api_key"].as_str().unwrap().to_owned(),
    }
}

/// The `127.0.0.1:port` after `local_addr` in a ready line (plain or JSON log format).
fn ready_addr(line: &str) -> Option<String> {
    let at = line.find("local_addr")?;
    let rest = &line[at..];
    let start = rest.find("127.0.0.1:")?;
    let digits: String = rest[start + "127.0.0.1:".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then(|| format!("127.0.0.1:{digits}"))
}

/// A `flywheel serve` child process; killed on drop.
pub struct Serve {
    pub child: Child,
    pub addr: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Serve {
    pub fn start(dir: &Path, extra: &[&str]) -> Serve {
        // Port 0: the server binds a free port itself and logs it ("flywheel is ready local_addr=…"). Picking a
        // free port here and passing it raced with the other tests' servers (one could take it first, and this
        // test then talked to the wrong server).
        let child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(if extra.contains(&"--log-level") {
                &[][..]
            } else {
                &["--log-level", "info"][..]
            })
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        // Drain stderr continuously so a chatty log level can never block the server on a full pipe; the ready
        // line's address is sent back as soon as it appears.
        let pipe = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let mut tx = Some(tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.is_some() && line.contains("flywheel is ready") {
                    if let Some(addr) = ready_addr(&line) {
                        let _ = tx.take().expect("sender").send(addr);
                    }
                }
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let mut serve = Serve {
            child,
            addr,
            stderr: Some(stderr),
        };
        if serve.addr.is_empty() {
            let _ = serve.child.kill();
            panic!(
                "server did not log its address within 30 s:\n{}",
                serve.stderr_after_exit()
            );
        }
        serve.wait_ready();
        serve
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http(&self.addr, "GET", "/readyz", &[], b"") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited with {status} before it was ready:\n{}",
                    self.stderr_after_exit()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server at {} did not become ready", self.addr);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server wrote to stderr so far (after it exited).
    pub fn stderr_after_exit(&mut self) -> String {
        self.stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP/1.1 client (one request per connection).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut out = Vec::new();
    match length {
        Some(n) => {
            out.resize(n, 0);
            reader.read_exact(&mut out)?;
        }
        None => {
            reader.read_to_end(&mut out)?;
        }
    }
    Ok((status, out))
}

pub fn get_json(addr: &str, path: &str, key: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let (status, body) = http(addr, "GET", path, &[("Authorization", &auth)], b"").unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}
