//! A throwaway PostgreSQL server for tests (cargo feature `test-support`).
//!
//! [`TestPostgres::start`] runs the PostgreSQL server programs of the machine (Debian's `postgresql` package puts
//! them in `/usr/lib/postgresql/<major>/bin`): `initdb` into a fresh temporary directory, then `postgres` on a free
//! loopback port with `fsync` off and its unix socket inside that directory, waits until it accepts connections,
//! creates the database `flywheel` and hands out a `postgres://` URL. Dropping the value stops the server
//! (`pg_ctl stop -m fast`, a kill if that fails) and removes the directory.
//!
//! - **As root** `initdb` and `postgres` refuse to run, so both (and `pg_ctl`, `createdb`) run as the unprivileged
//!   user `nobody` (or `FLYWHEEL_POSTGRES_USER`): the child process switches user itself before it executes the
//!   program (`std::os::unix::process::CommandExt::uid`/`gid`, which also drops the supplementary groups), and the
//!   temporary directory is given to that user. Under any other user the programs run as that user.
//! - **Missing PostgreSQL is an error, never a skip**: the message says to `apt-get install postgresql` (or to set
//!   `FLYWHEEL_POSTGRES_BIN` to the directory holding `initdb`, `postgres`, `pg_ctl` and `createdb`).
//! - Sign-in: the superuser `flywheel` with a random password over TCP (SCRAM, as a real deployment), `trust` only
//!   on the unix socket, which is private to the server's user. The cluster uses the `C` locale and UTF-8, so text
//!   sorts and `lower()` folds exactly as in SQLite (see `docs/postgres.md`).
//! - The server lives as long as the value, and never longer than the test process: `postgres` runs under a small
//!   `sh` watchdog that stops it and deletes the directory when the process ends without dropping it (killed, or
//!   the server kept in a `static`, which is never dropped: [`TestPostgres::shared`] is one server per test
//!   binary, with a database per test).
//!
//! ```no_run
//! let pg = flywheel_store::test_support::TestPostgres::start().unwrap();
//! let url = pg.url(); // postgres://flywheel:…@127.0.0.1:<port>/flywheel
//! let other = pg.create_database("second").unwrap();
//! # let _ = (url, other);
//! ```

use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::distributions::{Alphanumeric, DistString};

/// Directory holding `initdb`, `postgres`, `pg_ctl` and `createdb`, when they are not where Debian puts them.
pub const BIN_ENV: &str = "FLYWHEEL_POSTGRES_BIN";
/// The unprivileged user the server runs as when the tests run as root (default `nobody`).
pub const USER_ENV: &str = "FLYWHEEL_POSTGRES_USER";
/// The database [`TestPostgres::start`] creates (its URL is [`TestPostgres::url`]).
pub const DEFAULT_DATABASE: &str = "flywheel";
/// The cluster's superuser.
pub const SUPERUSER: &str = "flywheel";

const PROGRAMS: [&str; 4] = ["initdb", "postgres", "pg_ctl", "createdb"];
/// A cold `initdb` plus start takes 1–5 s on a busy 2-core machine; this is for a very slow CI runner.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const PORT_ATTEMPTS: usize = 5;

/// Why the throwaway server could not be started (the message says what to do).
#[derive(Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// `unwrap()` prints Debug: keep the message readable (it holds the server's log).
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(context: impl fmt::Display, e: impl fmt::Display) -> Error {
    Error(format!("test PostgreSQL: {context}: {e}"))
}

/// The user and group the server's programs run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running throwaway PostgreSQL server; stopped and deleted on drop.
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    password: String,
    run_as: Option<RunAs>,
    child: Option<Child>,
    url: String,
    /// Dropped last (fields drop in order): the directory goes once the server has stopped.
    dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Initialises a cluster in a new temporary directory, starts it on a free loopback port and creates the
    /// database [`DEFAULT_DATABASE`]. Blocks for the 1–5 s this takes.
    pub fn start() -> Result<Self, Error> {
        let bin = find_programs()?;
        let run_as = unprivileged_user()?;
        let dir = temp_dir(run_as)?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        let log = dir.path().join("postgres.log");
        fs::create_dir(&socket_dir).map_err(|e| err(socket_dir.display(), e))?;
        let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
        let mut server = Self {
            bin,
            data,
            socket_dir,
            log,
            port: 0,
            password,
            run_as,
            child: None,
            url: String::new(),
            dir,
        };
        if let Some(user) = run_as {
            for path in [server.dir.path(), server.socket_dir.as_path()] {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
                    err(format!("giving {} to uid {}", path.display(), user.uid), e)
                })?;
            }
        }
        server.initdb()?;
        server.run()?;
        server.url = server.create_database(DEFAULT_DATABASE)?;
        Ok(server)
    }

    /// One server for the whole test binary, started on first use; give each test its own database with
    /// [`Self::create_database`]. Never dropped (it is a `static`): the watchdog stops it and deletes its
    /// directory when the test process exits.
    pub fn shared() -> Result<&'static TestPostgres, Error> {
        static SHARED: OnceLock<Result<TestPostgres, Error>> = OnceLock::new();
        SHARED
            .get_or_init(Self::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// `postgres://flywheel:<password>@127.0.0.1:<port>/flywheel`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of another database of this server (which must exist: see [`Self::create_database`]).
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The loopback TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another (empty) database, e.g. one per test on a shared server, and returns its URL. The name is
    /// lower-case ASCII letters, digits and `_`.
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        let valid = !name.is_empty()
            && name.len() < 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(err("create_database", format!("invalid name {name:?}")));
        }
        let port = self.port.to_string();
        let out = self
            .program("createdb")
            .args(["-h".as_ref(), self.socket_dir.as_os_str()])
            .args(["-p", &port, "-U", SUPERUSER, name])
            .output()
            .map_err(|e| err("running createdb", e))?;
        if !out.status.success() {
            return Err(err(
                format!("createdb {name}"),
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(self.url_for(name))
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server and removes its directory (what dropping it does).
    pub fn stop(self) {}

    /// A command for one of the PostgreSQL programs, run as the server's user, with a clean environment (no
    /// `PGDATA`, `PGPORT`, … from the caller's) in the temporary directory.
    fn program(&self, name: &str) -> Command {
        self.command(self.bin.join(name))
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("LC_ALL", "C")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), Error> {
        // The password reaches initdb through a file (never the command line), removed right after.
        let pwfile = self.dir.path().join("pwfile");
        let mut f = File::create(&pwfile).map_err(|e| err(pwfile.display(), e))?;
        writeln!(f, "{}", self.password).map_err(|e| err(pwfile.display(), e))?;
        drop(f);
        if let Some(user) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(user.uid), Some(user.gid))
                .map_err(|e| err(pwfile.display(), e))?;
        }
        let out = self
            .program("initdb")
            .args(["-D".as_ref(), self.data.as_os_str()])
            .args(["--pwfile".as_ref(), pwfile.as_os_str()])
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(|e| err(format!("running {}", self.bin.join("initdb").display()), e))?;
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(err(
                "initdb failed",
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        Ok(())
    }

    /// Starts `postgres`; a port taken between choosing it and binding it is retried with another.
    fn run(&mut self) -> Result<(), Error> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            let log = File::create(&self.log).map_err(|e| err(self.log.display(), e))?;
            let log2 = log.try_clone().map_err(|e| err(self.log.display(), e))?;
            let port = self.port.to_string();
            let socket_dir = self.socket_dir.display().to_string();
            let data = self.data.display().to_string();
            let child = self
                .command("/bin/sh")
                .args(["-c", WATCHDOG, "watchdog"])
                .arg(self.dir.path())
                .arg(self.bin.join("postgres"))
                .args(["-D", &data, "-p", &port, "-k", &socket_dir])
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_permissions=0700",
                    // Throwaway data: no durability work.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "max_connections=100",
                ])
                // The watchdog's end of a pipe that closes when this process ends, however it ends.
                .stdin(Stdio::piped())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| err("running postgres", e))?;
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(Exit::Failed(log)) if log.contains("could not bind") => {
                    last = log;
                    self.child = None;
                }
                Err(Exit::Failed(log)) => {
                    return Err(err("postgres exited while starting; its log", log))
                }
                Err(Exit::Timeout(log)) => {
                    return Err(err(
                        format!("postgres did not get ready within {START_TIMEOUT:?}; its log"),
                        log,
                    ))
                }
            }
        }
        Err(err("no free port after several attempts; last log", last))
    }

    /// Ready when `postmaster.pid` says `ready` (what `pg_ctl -w` waits for) and the port accepts a connection.
    fn wait_ready(&mut self) -> Result<(), Exit> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.data.join("postmaster.pid");
        loop {
            let child = self.child.as_mut().expect("started");
            if let Ok(Some(_)) | Err(_) = child.try_wait() {
                return Err(Exit::Failed(self.log()));
            }
            let ready = fs::read_to_string(&pid_file)
                .is_ok_and(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"));
            if ready && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Exit::Timeout(self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `postgres` (`$2…`) and stops it when this process ends without dropping the server — killed (SIGKILL,
/// a test timeout) or holding it in a `static` — then deletes the directory (`$1`): its standard input is a pipe
/// from this process, and the end of the pipe (EOF) makes it send `postgres` SIGINT (fast shutdown). When
/// `postgres` exits by itself (a failed start) the watchdog exits with its status. (A background list reads
/// /dev/null unless told otherwise: the pipe is moved to fd 3 first.)
const WATCHDOG: &str = r#"dir=$1; shift
exec 3<&0 </dev/null
"$@" 3<&- &
pg=$!
{ read -r line <&3; : > "$dir/.stopping"; kill -INT "$pg" 2>/dev/null; } &
watcher=$!
exec 3<&-
wait "$pg"
status=$?
if [ -e "$dir/.stopping" ]; then rm -rf "$dir"; else kill "$watcher" 2>/dev/null; fi
exit "$status""#;

enum Exit {
    Failed(String),
    Timeout(String),
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Fast shutdown: clients are disconnected, the server exits in well under a second. (Should `pg_ctl` fail,
        // killing the watchdog closes its pipe too late to matter: `wait` below closes it, and the watchdog's
        // reader stops `postgres`.)
        let stopped = self
            .program("pg_ctl")
            .args(["stop".as_ref(), "-D".as_ref(), self.data.as_os_str()])
            .args(["-m", "fast", "-w", "-t", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// The directory holding PostgreSQL's server programs: `FLYWHEEL_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian, Ubuntu), else a directory on `PATH` holding all of them.
pub fn find_programs() -> Result<PathBuf, Error> {
    find_programs_in(
        std::env::var_os(BIN_ENV).map(PathBuf::from),
        Path::new("/usr/lib/postgresql"),
        std::env::var_os("PATH"),
    )
}

fn find_programs_in(
    explicit: Option<PathBuf>,
    debian_root: &Path,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf, Error> {
    let has_all = |dir: &Path| PROGRAMS.iter().all(|p| dir.join(p).is_file());
    if let Some(dir) = explicit {
        return if has_all(&dir) {
            Ok(dir)
        } else {
            Err(Error(format!(
                "test PostgreSQL: {BIN_ENV}={} does not hold all of {} (Debian/Ubuntu: \
                 `apt-get install postgresql` puts them in /usr/lib/postgresql/<major>/bin)",
                dir.display(),
                PROGRAMS.join(", ")
            )))
        };
    }
    // Numeric order: 9.6 < 10 < 15.
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(debian_root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.split('.').map(|p| p.parse().unwrap_or(0)).collect();
            (version, e.path().join("bin"))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.into_iter().rev().find(|(_, dir)| has_all(dir)) {
        return Ok(dir);
    }
    if let Some(dir) = path
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_all(dir))
    {
        return Ok(dir);
    }
    Err(Error(format!(
        "test PostgreSQL: the PostgreSQL server programs ({}) are not installed: not in \
         {}/*/bin nor on PATH. Install them (Debian/Ubuntu, as root: \
         `apt-get install postgresql`), or set {BIN_ENV} to the directory that holds them.",
        PROGRAMS.join(", "),
        debian_root.display()
    )))
}

/// `None` when not root (the programs run as the current user); as root, the user from `FLYWHEEL_POSTGRES_USER`
/// or `nobody`.
fn unprivileged_user() -> Result<Option<RunAs>, Error> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    let name = std::env::var(USER_ENV).unwrap_or_else(|_| "nobody".to_owned());
    let id = |flag: &str| -> Result<u32, Error> {
        let out = Command::new("id")
            .args([flag, &name])
            .output()
            .map_err(|e| err("running id", e))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                Error(format!(
                    "test PostgreSQL: running as root, and PostgreSQL refuses to run as root; the user {name:?} to \
                     run it as does not exist ({}). Set {USER_ENV} to an unprivileged user.",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            })
    };
    let run_as = RunAs {
        uid: id("-u")?,
        gid: id("-g")?,
    };
    if run_as.uid == 0 {
        return Err(Error(format!(
            "test PostgreSQL: {USER_ENV}={name} is root; PostgreSQL refuses to run as root"
        )));
    }
    Ok(Some(run_as))
}

/// The effective user id, from `/proc/self/status` (Linux; `None` elsewhere, treated as not root).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A new private directory for the cluster. When the server runs as another user, that user must be able to
/// reach it: `$TMPDIR` is used only if every ancestor is searchable by others, else `/tmp`.
fn temp_dir(run_as: Option<RunAs>) -> Result<tempfile::TempDir, Error> {
    let mut parent = std::env::temp_dir();
    if run_as.is_some() {
        let reachable = parent
            .ancestors()
            .all(|p| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
        if !reachable {
            parent = PathBuf::from("/tmp");
        }
    }
    tempfile::Builder::new()
        .prefix("flywheel-pg-")
        .tempdir_in(&parent)
        .map_err(|e| err(format!("creating a directory in {}", parent.display()), e))
}

/// A loopback port nobody listens on right now (the kernel's choice; a race with another process is retried).
fn free_port() -> Result<u16, Error> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| err("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| err("finding a free port", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_install(dir: &Path, programs: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for p in programs {
            File::create(dir.join(p)).unwrap();
        }
    }

    #[test]
    fn programs_are_found_newest_debian_version_first_then_on_path() {
        let root = tempfile::tempdir().unwrap();
        let debian = root.path().join("lib/postgresql");
        let on_path = root.path().join("bin");
        let path = Some(on_path.clone().into_os_string());

        let e = find_programs_in(None, &debian, path.clone()).unwrap_err();
        assert!(e.to_string().contains("apt-get install postgresql"), "{e}");

        fake_install(&on_path, &PROGRAMS);
        assert_eq!(find_programs_in(None, &debian, path.clone()), Ok(on_path));

        fake_install(&debian.join("9.6/bin"), &PROGRAMS);
        fake_install(&debian.join("15/bin"), &PROGRAMS);
        fake_install(&debian.join("16/bin"), &["initdb", "postgres"]); // a partial install is passed over
        assert_eq!(
            find_programs_in(None, &debian, path.clone()),
            Ok(debian.join("15/bin"))
        );

        let e = find_programs_in(Some(debian.join("16/bin")), &debian, path).unwrap_err();
        assert!(e.to_string().contains("FLYWHEEL_POSTGRES_BIN"), "{e}");
        assert!(e.to_string().contains("apt-get install postgresql"), "{e}");
    }
}
