//! A throwaway PostgreSQL server for `weir demo`, the tests and the benchmark.
//!
//! `initdb` in a temporary directory, `wal_level = logical`, a free loopback port, trust
//! authentication. PostgreSQL refuses to run as root, so under root the server runs as
//! the `postgres` user. A watchdog process stops the server when the process that
//! started it exits, however it exits.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running throwaway server; stopped on drop. Or a server someone else runs
/// ([`external`](TempPostgres::external)), used as it is and left running.
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    /// The given server's URL (its database part is replaced per database).
    external: Option<url::Url>,
}

fn find_bin(name: &str) -> io::Result<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    if let Some(p) = from_path {
        return Ok(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{name}` not found: install the PostgreSQL server binaries"),
        )
    })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TempPostgres {
    /// Initializes and starts a server. Takes a few seconds.
    pub fn start() -> io::Result<TempPostgres> {
        TempPostgres::start_with("")
    }

    /// Like [`start`](Self::start), with extra `postgresql.conf` lines (they win).
    pub fn start_with(extra_conf: &str) -> io::Result<TempPostgres> {
        let initdb = find_bin("initdb")?;
        let bin = initdb
            .parent()
            .expect("binary has a directory")
            .to_path_buf();
        let run_as = is_root().then(|| "postgres".to_string());
        let dir = tempfile::Builder::new().prefix("weir-pg-").tempdir()?;
        if let Some(user) = &run_as {
            chown_to(dir.path(), user)?;
        }
        let data = dir.path().join("data");
        let port = free_port()?;
        let pg = TempPostgres {
            dir,
            bin,
            port,
            run_as,
            external: None,
        };
        pg.command("initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .checked()?;
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 64\nmax_wal_senders = 64\nmax_connections = 200\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 256MB\nmax_wal_size = 4GB\n\
             log_min_messages = warning\n{extra_conf}\n",
            pg.dir.path().display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(conf.as_bytes())
            })?;
        pg.start_server()?;
        pg.spawn_watchdog()?;
        Ok(pg)
    }

    /// The server `url` names (`WEIR_TEST_PG_URL`), as a superuser with `wal_level =
    /// logical`: nothing is started, and nothing is stopped on drop. Restarting it,
    /// TLS and `pg_hba.conf` changes are not available.
    pub fn external(url: &str) -> io::Result<TempPostgres> {
        let parsed = url::Url::parse(url)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {e}")))?;
        Ok(TempPostgres {
            dir: tempfile::Builder::new().prefix("weir-pg-").tempdir()?,
            bin: find_bin("psql")?
                .parent()
                .expect("binary has a directory")
                .to_path_buf(),
            port: parsed.port().unwrap_or(5432),
            run_as: None,
            external: Some(parsed),
        })
    }

    /// `WEIR_TEST_PG_URL`'s server when it is set, else a throwaway one.
    pub fn from_env_or_start() -> io::Result<TempPostgres> {
        match std::env::var("WEIR_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => TempPostgres::external(&url),
            _ => TempPostgres::start(),
        }
    }

    /// Whether this is a server weir's tests did not start.
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    fn managed(&self, what: &str) -> io::Result<()> {
        match &self.external {
            Some(_) => Err(io::Error::other(format!(
                "{what} needs a server the tests start themselves, not WEIR_TEST_PG_URL"
            ))),
            None => Ok(()),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn start_server(&self) -> io::Result<()> {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .checked()
    }

    /// Stops the server (`fast`: connections are closed, as in an orderly restart), waits
    /// `down`, and starts it again on the same port.
    pub fn restart(&self, down: std::time::Duration) -> io::Result<()> {
        self.managed("restarting the server")?;
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .checked()?;
        std::thread::sleep(down);
        self.start_server()
    }

    /// Turns TLS on with this certificate and key (PEM), and reloads.
    pub fn enable_ssl(&self, cert: &str, key: &str) -> io::Result<()> {
        self.managed("enabling TLS")?;
        use std::os::unix::fs::PermissionsExt;
        for (name, pem) in [("server.crt", cert), ("server.key", key)] {
            let path = self.data().join(name);
            std::fs::write(&path, pem)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some(user) = &self.run_as {
                chown_to(&path, user)?;
            }
        }
        let conf = self.data().join("postgresql.conf");
        let text = std::fs::read_to_string(&conf)?;
        std::fs::write(&conf, format!("{text}\nssl = on\n"))?;
        self.reload()
    }

    /// Makes the server read its configuration files again.
    fn reload(&self) -> io::Result<()> {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("reload")
            .checked()
    }

    /// Puts `lines` in front of `pg_hba.conf` (first match wins) and reloads.
    pub fn prepend_hba(&self, lines: &str) -> io::Result<()> {
        self.managed("changing pg_hba.conf")?;
        let path = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&path)?;
        std::fs::write(&path, format!("{lines}\n{old}"))?;
        self.reload()
    }

    fn spawn_watchdog(&self) -> io::Result<()> {
        let stop = format!(
            "{} -D '{}' -m immediate stop",
            self.command_line("pg_ctl"),
            self.data().display()
        );
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{}'",
            std::process::id(),
            self.dir.path().display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(())
    }

    fn command_line(&self, program: &str) -> String {
        let path = self.bin.join(program).display().to_string();
        match &self.run_as {
            Some(user) => format!("runuser -u {user} -- {path}"),
            None => path,
        }
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        match &self.external {
            Some(url) => {
                let mut url = url.clone();
                url.set_path(db);
                url.to_string()
            }
            None => format!("postgres://postgres@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// Runs SQL through `psql` (for setup steps that are easier as a script).
    pub fn psql(&self, db: &str, sql: &str) -> io::Result<String> {
        let out = Command::new(find_bin("psql")?)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(db),
                "-c",
                sql,
            ])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.external.is_some() {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

trait Checked {
    fn checked(&mut self) -> io::Result<()>;
}

impl Checked for Command {
    fn checked(&mut self) -> io::Result<()> {
        let out = self.stdin(Stdio::null()).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{:?} failed: {}{}",
                self.get_program(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

fn is_root() -> bool {
    // The effective uid, without unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn chown_to(path: &Path, user: &str) -> io::Result<()> {
    let status = Command::new("chown").arg(user).arg(path).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "chown {user} {} failed",
            path.display()
        )))
    }
}
