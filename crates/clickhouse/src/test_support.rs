//! A throwaway ClickHouse server for tests (this crate's and the server's; the `test-support` feature): Debian's `clickhouse-server` (18.16, installed by
//! `scripts/setup-test-env`), started on loopback on free ports with its data in a temporary directory, stopped and
//! removed when the [`Server`] is dropped. Nothing is skipped: without a server binary the tests fail and say how
//! to install one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; killed and its directory removed on drop.
pub struct Server {
    child: Child,
    dir: tempfile::TempDir,
    pub url: String,
    http: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> (PathBuf, Vec<&'static str>) {
    if let Ok(p) = std::env::var("FLYWHEEL_CLICKHOUSE_SERVER") {
        return (PathBuf::from(p), Vec::new());
    }
    for p in ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"] {
        if Path::new(p).exists() {
            return (PathBuf::from(p), Vec::new());
        }
    }
    // Newer packages ship one `clickhouse` binary with a `server` command.
    if Path::new("/usr/bin/clickhouse").exists() {
        return (PathBuf::from("/usr/bin/clickhouse"), vec!["server", "--"]);
    }
    panic!(
        "no ClickHouse server binary: run scripts/setup-test-env as root (it runs `apt-get install \
         clickhouse-server clickhouse-client`), or set FLYWHEEL_CLICKHOUSE_SERVER to a clickhouse-server binary"
    );
}

/// A loopback port nothing listens on, never one this process handed out before: a server stopped by a test keeps
/// its ports for its restart, and another test's server must not take them meanwhile.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn config(dir: &Path, http: u16, tcp: u16) -> String {
    let d = dir.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <timezone>UTC</timezone>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <profiles><default></default></profiles>
  <quotas><default></default></quotas>
</yandex>
"#
    )
}

fn ping(http: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", http)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.") && out.contains(" 200 ") && out.ends_with("Ok.\n")
}

/// Starts `clickhouse-server` on the directory's config (written by [`start`]).
fn spawn(dir: &Path) -> Child {
    let (bin, prefix) = binary();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stdout.log"))
        .expect("a log file");
    let mut cmd = Command::new(&bin);
    cmd.args(&prefix);
    cmd.arg(format!(
        "--config-file={}",
        dir.join("config.xml").display()
    ))
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(log.try_clone().expect("a log handle"))
    .stderr(log);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
}

impl Server {
    /// Waits until the server answers (at most 60 s).
    fn wait(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ping(self.http) {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let read =
                    |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                panic!(
                    "ClickHouse did not start (exit: {exited:?}):\n{}\n{}",
                    read("stdout.log"),
                    read("error.log")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (as a crash would); its data stays.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped server again on the same ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        self.child = spawn(self.dir.path());
        self.wait();
    }
}

/// Starts a server and waits until it answers (at most 60 s).
pub fn start() -> Server {
    let dir = tempfile::Builder::new()
        .prefix("flywheel-clickhouse-")
        .tempdir()
        .expect("a temporary directory");
    let (http, tcp) = (free_port(), free_port());
    std::fs::write(dir.path().join("config.xml"), config(dir.path(), http, tcp))
        .expect("the server's config");
    let child = spawn(dir.path());
    let mut server = Server {
        child,
        dir,
        url: format!("http://127.0.0.1:{http}"),
        http,
    };
    server.wait();
    server
}
