//! A real PostgreSQL server (Debian's `postgresql` package) for tests: `initdb` into a temporary
//! directory and `pg_ctl start` on a free loopback port, as the `postgres` user (via `runuser`)
//! when the tests run as root, which PostgreSQL refuses to run as; stopped on drop, failed test
//! or not. Trust authentication on loopback only: the server listens nowhere else.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// Where Debian puts the server's binaries (`/usr/lib/postgresql/<major>/bin`), newest first;
/// `RAMP_PG_BIN` overrides.
fn server_bin() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("RAMP_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install -y postgresql)")?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/<major>/bin/pg_ctl")
}

fn running_as_root() -> bool {
    // The effective uid from procfs, as `id -u` prints it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `program args...`, as `postgres` when we are root.
fn command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut c: Command, what: &str) -> Result<()> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Postgres {
    /// A fresh cluster, started and accepting connections.
    pub fn start() -> Result<Self> {
        let bin = server_bin()?;
        let dir = tempfile::Builder::new().prefix("ramp-pg").tempdir()?;
        if running_as_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown",
            )?;
        }
        let data = dir.path().join("data");
        let mut init = command(&bin, "initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(init, "initdb")?;
        // A free port is taken and handed over; another process could take it in between, so a
        // start that fails is retried on a new one.
        let mut last = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut start = command(&bin, "pg_ctl");
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "60", "start", "-o"])
                .arg(format!(
                    "-p {port} -h 127.0.0.1 -k {} -c fsync=off -c max_connections=200",
                    dir.path().display()
                ));
            match run(start, "pg_ctl start") {
                Ok(()) => return Ok(Postgres { port, dir, bin }),
                Err(e) => last = Some(e),
            }
        }
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        bail!(
            "{}; server log: {log}",
            last.map_or(String::new(), |e| e.to_string())
        )
    }

    /// CPU seconds (user + system) the server's processes have used so far: the postmaster and
    /// its children alive now (each connection's backend lives as long as its connection).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid_file = self.dir.path().join("data/postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .or_else(|_| {
                // Not readable as the test's user: ask as the server's.
                let out = command(Path::new("/bin"), "cat").arg(&pid_file).output()?;
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .context("postmaster.pid")?;
        let master: u32 = text
            .lines()
            .next()
            .context("postmaster.pid")?
            .trim()
            .parse()?;
        let mut total = crate::procfs::cpu_seconds(master)?;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(master) {
                total += crate::procfs::cpu_seconds(pid).unwrap_or(0.0);
            }
        }
        Ok(total)
    }

    /// The connection string of database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one SQL statement with `psql` and returns what it printed (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .context("psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: a test's server holds nothing worth a clean shutdown, and this runs on
        // failure too.
        let mut stop = command(&self.bin, "pg_ctl");
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_server_starts_answers_and_stops() {
        let pg = Postgres::start().unwrap();
        assert_eq!(pg.psql("SELECT 40 + 2").unwrap(), "42");
        let version: u32 = pg.psql("SHOW server_version_num").unwrap().parse().unwrap();
        assert!(version >= 150_000, "{version}");
        let dir = pg.dir.path().join("data");
        drop(pg);
        assert!(
            !dir.join("postmaster.pid").exists(),
            "the server stopped with its handle"
        );
    }
}
