//! A throwaway PostgreSQL cluster on a free loopback port: `initdb` into a
//! temporary directory, `postgres` as a child process (as the `postgres`
//! user when the tests run as root; PostgreSQL refuses root). Shared by the
//! unit tests (src/testing.rs) and the integration tests. scripts/test.sh
//! installs Debian's `postgresql` when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PgCluster {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// A PostgreSQL program (`initdb`, `postgres`): on PATH, else in Debian's
/// versioned directory.
fn program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            let mut v: Vec<PathBuf> = dirs
                .flatten()
                .map(|d| d.path().join("bin").join(name))
                .collect();
            v.sort();
            v.reverse();
            v
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(debian)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL's {name} is not installed (scripts/test.sh installs it: apt-get install postgresql)")
        })
}

/// The user to run PostgreSQL as: the `postgres` user when we are root.
fn run_as(cmd: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let ids = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.get(2)?.parse::<u32>().ok()?,
                f.get(3)?.parse::<u32>().ok()?,
            ))
        })
        .expect("running as root needs the postgres user (apt-get install postgresql makes it)");
    std::os::unix::fs::chown(dir, Some(ids.0), Some(ids.1)).unwrap();
    cmd.uid(ids.0).gid(ids.1);
}

impl PgCluster {
    /// A new cluster, started and accepting connections.
    pub fn start() -> PgCluster {
        let dir = std::env::temp_dir().join(format!("cascade-pg-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut init = Command::new(program("initdb"));
        init.arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "cascade", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        run_as(&mut init, &dir);
        assert!(init.status().unwrap().success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = PgCluster {
            dir,
            port,
            child: None,
        };
        pg.resume();
        pg
    }

    /// (Re)start the server on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(program("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=60",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log")).unwrap());
        run_as(&mut cmd, &self.dir);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = self.with_client("postgres", |_| Ok(())) {
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {e}\n{}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (a fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// The connection URL of a database, with a password (trust auth
    /// ignores it; tests check it never shows).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://cascade:{}@127.0.0.1:{}/{db}",
            PASSWORD, self.port
        )
    }

    /// A new empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let sql = format!("CREATE DATABASE {name}");
        self.with_client("postgres", move |c| c.batch_execute(&sql))
            .unwrap();
        self.url(name)
    }

    /// Run `f` with a client, on a thread of its own (the blocking client
    /// must not run on a test's async runtime).
    pub fn with_client<T: Send + 'static>(
        &self,
        db: &str,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, postgres::Error> {
        let url = self.url(db);
        std::thread::spawn(move || f(&mut postgres::Client::connect(&url, postgres::NoTls)?))
            .join()
            .unwrap()
    }

    /// The first value of a query's first row, as i64.
    pub fn value(&self, db: &str, sql: &str) -> i64 {
        let sql = sql.to_string();
        self.with_client(db, move |c| Ok(c.query_one(&sql, &[])?.get::<_, i64>(0)))
            .unwrap()
    }
}

/// The password every test URL carries.
pub const PASSWORD: &str = "pg-secret-9f3b";

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
