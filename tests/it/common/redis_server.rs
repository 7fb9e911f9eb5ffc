//! A throwaway redis-server on a free loopback port, with append-only
//! persistence in a temporary directory (so a restart keeps the keys, as a
//! production Redis does). scripts/test.sh installs Debian's `redis-server`
//! when it is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("cascade-redis-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            dir,
            port,
            child: None,
        };
        r.resume();
        r
    }

    /// (Re)start on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server is not installed (scripts/test.sh installs it: apt-get install redis-server)");
        self.child = Some(
            Command::new(bin)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill it (as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One inline command; the first line of the reply.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        let reply = String::from_utf8_lossy(&buf[..n]).to_string();
        // a bulk string: its value is on the second line
        if reply.starts_with('$') {
            return reply.lines().nth(1).map(str::to_string);
        }
        reply.lines().next().map(str::to_string)
    }

    /// An integer key's value (0 when missing).
    pub fn int(&self, key: &str) -> i64 {
        self.command(&format!("GET {key}"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
