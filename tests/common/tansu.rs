//! A Tansu broker (Kafka protocol, sqlite storage) on 127.0.0.1 for integration tests, started
//! from a scratch folder and stopped on drop. `.ci/run` installs it (`cargo install tansu`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The tansu binary: $TANSU_BIN, else ~/.cargo/bin/tansu, else `tansu` on the PATH.
pub fn binary() -> PathBuf {
    if let Ok(b) = std::env::var("TANSU_BIN") {
        return b.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo.exists() {
        cargo
    } else {
        "tansu".into()
    }
}

impl Tansu {
    pub fn start() -> Tansu {
        let bin = binary();
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .current_dir(dir.path())
            .args(["broker", "--storage-engine", "sqlite://tansu.db", "--listener-url", &url, "--advertised-listener-url", &url])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Tansu broker {}: {e}; install it with `cargo install tansu --locked --version 0.6.0 --features libsql` (scripts/setup does)", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Tansu did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let t = Tansu {
            child,
            port,
            dir,
            bin,
        };
        t.index_headers();
        t
    }

    /// Tansu 0.6.0's sqlite schema has no index on `header (topition, offset_id)`, and its fetch
    /// looks up each record's headers with one query: every fetched record scans the whole header
    /// table, so reading N records with headers costs O(N x all headers) (30k archive records
    /// with byok headers took many minutes; without headers 1.4 s). The index is what the
    /// schema lacks; it changes no data. Made with Python's sqlite3 once Tansu created its tables.
    fn index_headers(&self) {
        let db = self.dir.path().join("tansu.db");
        let script = r#"
import sqlite3, sys, time
for _ in range(300):
    try:
        c = sqlite3.connect(sys.argv[1], timeout=30)
        if c.execute("select 1 from sqlite_master where name = 'header'").fetchone():
            c.execute("create index if not exists byok_header_record on header (topition, offset_id)")
            c.commit()
            sys.exit(0)
        c.close()
    except sqlite3.OperationalError as e:
        print(e, file=sys.stderr)
    time.sleep(0.1)
sys.exit("no header table in " + sys.argv[1])
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&db)
            .output()
            .expect("python3 (scripts/setup installs it) indexes Tansu's header table");
        assert!(
            out.status.success(),
            "indexing Tansu's header table: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The pipeline's topics: capture and archive with `partitions`, the registry, the public
    /// keys and the quarantine with one each.
    pub fn create_pipeline_topics(&self, partitions: u32) {
        for (t, p) in [
            ("capture.messages", partitions),
            ("archive.messages", partitions),
            ("byok.deks", 1),
            ("byok.keks", 1),
            ("byok.quarantine", 1),
        ] {
            self.create_topic(t, p);
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with(name, partitions, &[]);
    }

    /// Changes what the broker stores, as someone with access to its storage could (Tansu
    /// 0.6.0 keeps records in sqlite; its `topic delete` drops every topic, so a "re-created
    /// topic" is simulated here): `flip` XORs one bit of a record's value `at` bytes from its end,
    /// `delete` removes a record and its headers (the other offsets stay).
    pub fn tamper(&self, action: &str, topic: &str, partition: i32, offset: i64, at: usize) {
        let script = r#"
import sqlite3, sys
action, topic, partition, offset, at = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
c = sqlite3.connect(sys.argv[1], timeout=30)
tp = c.execute("select tp.id from topition tp join topic t on tp.topic = t.id where t.name = ? and tp.partition = ?", (topic, partition)).fetchone()[0]
if action == "flip":
    v = bytearray(c.execute("select v from record where topition = ? and offset_id = ?", (tp, offset)).fetchone()[0])
    v[len(v) - at] ^= 1
    c.execute("update record set v = ? where topition = ? and offset_id = ?", (bytes(v), tp, offset))
else:
    c.execute("delete from header where topition = ? and offset_id = ?", (tp, offset))
    n = c.execute("delete from record where topition = ? and offset_id = ?", (tp, offset)).rowcount
    assert n == 1, n
c.commit()
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.dir.path().join("tansu.db"))
            .args([
                action,
                topic,
                &partition.to_string(),
                &offset.to_string(),
                &at.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tampering with {topic}/{partition}/{offset}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates a topic with topic configs (`key=value`).
    pub fn create_topic_with(&self, name: &str, partitions: u32, configs: &[&str]) {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path()).args([
            "topic",
            "create",
            name,
            "--broker",
            &format!("tcp://127.0.0.1:{}", self.port),
            "--partitions",
            &partitions.to_string(),
        ]);
        for c in configs {
            cmd.args(["--config", c]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
