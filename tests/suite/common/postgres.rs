//! A throwaway PostgreSQL server for the tests that need one: `initdb` into a temporary
//! directory and `pg_ctl start` on a free loopback port, stopped and removed when the
//! [`TestPostgres`] is dropped (also when the test fails). The server refuses to run as root, so
//! a root test process runs both as the `postgres` user (Debian's package creates it), or as
//! `nobody` when there is none. Password authentication is on: the superuser `postgres` has
//! [`PASSWORD`], so that the tests exercise the way gymforge is given a password.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser's password on every test server.
pub const PASSWORD: &str = "gf-test-pw-3141";

pub struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// The user the server runs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
}

/// The directory holding `initdb`, `pg_ctl`, `createdb` and `psql`: initdb's on the PATH, else
/// the newest of Debian's `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file())
        // The directory of the real programs, not of a link to initdb: createdb and psql are there.
        .and_then(|dir| Some(std::fs::canonicalize(dir.join("initdb")).ok()?.parent()?.to_path_buf()));
    let debian = || {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    };
    on_path.or_else(debian).unwrap_or_else(|| {
        panic!("PostgreSQL's initdb and pg_ctl are not installed: run scripts/bootstrap.sh (it installs Debian's postgresql package)")
    })
}

/// The uid and gid of `name` in /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == name).then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestPostgres {
    /// Creates and starts a server; panics with what went wrong (the server's log included).
    pub fn start() -> TestPostgres {
        let run_as =
            rustix::process::geteuid().is_root().then(|| user_ids("postgres").or_else(|| user_ids("nobody")).unwrap_or((65534, 65534)));
        // Under /tmp, not TMPDIR: the server's user must be able to reach it.
        let dir = tempfile::Builder::new().prefix("gymforge-pg-").tempdir_in("/tmp").unwrap();
        let mut server = TestPostgres { bin: bin_dir(), dir, port: 0, run_as };
        let pwfile = server.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(server.dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let data = server.data();
        let out = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .args(["-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert_ok("initdb", &out, None);
        // A port taken between finding it and binding it fails the start: try a few.
        for _ in 0..5 {
            server.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200",
                server.port,
                server.dir.path().display()
            );
            let out = server
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(server.log())
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()
                .unwrap();
            if out.status.success() {
                return server;
            }
            if !std::fs::read_to_string(server.log()).unwrap_or_default().contains("could not bind") {
                assert_ok("pg_ctl start", &out, Some(&server.log()));
            }
        }
        panic!("PostgreSQL found no free port on 127.0.0.1 in five tries");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store URL of `database` on this server (no password: tests pass it apart).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert_ok("createdb", &out, None);
    }

    /// Runs one SQL statement with psql as the superuser; returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert_ok("psql", &out, None);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]).output();
    }
}

fn assert_ok(what: &str, out: &Output, log: Option<&Path>) {
    if !out.status.success() {
        let log = log.map(|l| std::fs::read_to_string(l).unwrap_or_default()).unwrap_or_default();
        panic!("{what} failed ({}):\n{}{}\n{log}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}
