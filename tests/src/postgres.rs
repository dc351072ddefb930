//! PostgreSQL + pgvector clusters for tests, run as an unprivileged user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{env, free_port, temp_dir};

/// The password role of [`PgCluster::start_tls`] clusters.
pub const TLS_USER: &str = "app";
/// Its password.
pub const TLS_PASSWORD: &str = "app-secret-pw-7f3a";

/// One PostgreSQL server with its own data directory.
pub struct PgCluster {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    root: PathBuf,
    owner: Option<(u32, u32)>,
    /// Shared clusters outlive the test process; `scripts/test` stops them.
    keep: bool,
    /// Extra `-c` settings for the server.
    extra: String,
    /// The `bin` directory of the PostgreSQL build that runs it.
    bin: PathBuf,
}

impl PgCluster {
    /// Initialises and starts a new cluster.
    pub fn start(name: &str) -> PgCluster {
        Self::start_with(name, "")
    }

    /// Initialises and starts a new cluster with extra server options (`-c k=v ...`).
    pub fn start_with(name: &str, options: &str) -> PgCluster {
        let mut cluster = Self::init(name);
        cluster.extra = options.to_owned();
        cluster.start_server();
        cluster
    }

    /// Initialises a data directory without starting the server.
    pub fn init(name: &str) -> PgCluster {
        let cluster = Self::empty(name);
        cluster.run_ok(
            cluster.pg("initdb").args([
                "-D",
                &cluster.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        );
        cluster
    }

    /// A streaming standby of `primary`, started (pg_basebackup -R).
    pub fn standby_of(primary: &PgCluster, name: &str) -> PgCluster {
        let cluster = Self::empty(name);
        cluster.run_ok(
            cluster.pg("pg_basebackup").args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &cluster.data().to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ]),
            "pg_basebackup",
        );
        cluster.start_server();
        cluster
    }

    /// A cluster of Debian's PostgreSQL 15, built with TLS (the pgvector
    /// build is not): `hostssl` only for every role but the harness's
    /// `postgres`, password (scram) for [`TLS_USER`] and certificate
    /// authentication for the PKI's client name.
    pub fn start_tls(name: &str) -> (PgCluster, crate::tls::TestPki) {
        let mut cluster = Self::empty(name);
        cluster.bin = env::get().pg_tls_bin.clone();
        let pki = crate::tls::TestPki::generate(&cluster.root, cluster.owner);
        cluster.run_ok(
            cluster.pg("initdb").args([
                "-D",
                &cluster.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        );
        let hba = format!(
            "local all all trust\n\
             hostssl all {cn} 127.0.0.1/32 cert\n\
             host all postgres 127.0.0.1/32 trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
            cn = pki.client_cn
        );
        std::fs::write(cluster.data().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        cluster.extra = format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={}",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        );
        cluster.start_server();
        cluster.psql(
            "postgres",
            &format!("CREATE ROLE {TLS_USER} LOGIN PASSWORD '{TLS_PASSWORD}'"),
        );
        cluster.psql("postgres", &format!("CREATE ROLE {} LOGIN", pki.client_cn));
        cluster.psql("postgres", &format!("CREATE DATABASE tp OWNER {TLS_USER}"));
        cluster.psql(
            "tp",
            &format!("GRANT ALL ON SCHEMA public TO {}", pki.client_cn),
        );
        (cluster, pki)
    }

    fn empty(name: &str) -> PgCluster {
        let root = temp_dir(&format!("pg-{name}"));
        let owner = env::get().pg_user.as_deref().map(user_ids);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown pg dir");
        }
        PgCluster {
            port: free_port(),
            root,
            owner,
            keep: false,
            extra: String::new(),
            bin: env::get().pg_bin.clone(),
        }
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    fn pg(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .current_dir(&self.root);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run_ok(&self, cmd: &mut Command, what: &str) -> Output {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 \
             -c shared_buffers=64MB -c fsync=off -c synchronous_commit=off \
             -c wal_keep_size=256MB {}",
            self.port,
            self.root.display(),
            self.extra
        );
        self.run_ok(
            self.pg("pg_ctl").args([
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.root.join("server.log").to_string_lossy(),
                "-o",
                &options,
            ]),
            "pg_ctl start",
        );
    }

    /// Stops the server (`fast`: disconnect clients, clean shutdown).
    pub fn stop(&self) {
        self.run_ok(
            self.pg("pg_ctl").args([
                "stop",
                "-w",
                "-m",
                "fast",
                "-D",
                &self.data().to_string_lossy(),
            ]),
            "pg_ctl stop",
        );
    }

    /// The running postmaster's process id.
    pub fn postmaster_pid(&self) -> u32 {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
            .and_then(|line| line.trim().parse::<u32>().ok())
            .expect("postmaster.pid")
    }

    /// Kills the postmaster with SIGKILL, as a crashed primary.
    pub fn kill(&self) {
        crate::signal(self.postmaster_pid(), "KILL");
        // Children notice the postmaster is gone and exit; wait for the port to free.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `standby` has replayed everything written here so far.
    pub fn wait_until_replayed(&self, standby: &PgCluster) {
        // The insert position: with synchronous_commit=off, committed records may
        // still sit in WAL buffers behind the write position.
        let lsn = self.psql("postgres", "SELECT pg_current_wal_insert_lsn()");
        let deadline = Instant::now() + Duration::from_secs(20);
        let query = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        while standby.psql("postgres", &query) != "t" {
            assert!(
                Instant::now() < deadline,
                "standby did not replay up to {lsn}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Promotes a standby to primary.
    pub fn promote(&self) {
        self.run_ok(
            self.pg("pg_ctl")
                .args(["promote", "-w", "-D", &self.data().to_string_lossy()]),
            "pg_ctl promote",
        );
    }

    /// A URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.run_ok(
            self.pg("psql").args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ]),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates an empty database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// The data directory's root (for logs in assertion messages).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Keeps the server running until this test process exits, for a
    /// cluster held in a `static` (which is never dropped).
    pub fn until_exit(mut self) -> PgCluster {
        self.keep = true;
        self.stop_after_exit();
        self
    }

    /// Starts a detached watcher that stops the server (immediate
    /// shutdown) and removes the cluster's directory after this process
    /// has exited.
    fn stop_after_exit(&self) {
        const WATCH: &str = "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; \
            pm=$(head -n 1 \"$1/data/postmaster.pid\" 2>/dev/null) && kill -QUIT \"$pm\"; \
            while [ -n \"$pm\" ] && kill -0 \"$pm\" 2>/dev/null; do sleep 0.2; done; \
            rm -rf \"$1\"";
        let spawned = Command::new("sh")
            .args([
                "-c",
                WATCH,
                &std::process::id().to_string(),
                &self.root.to_string_lossy(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("cannot watch the shared PostgreSQL cluster: {e}");
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = self
            .pg("pg_ctl")
            .args([
                "stop",
                "-m",
                "immediate",
                "-D",
                &self.data().to_string_lossy(),
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The cluster shared by tests that need only a database of their own.
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    // A `static` is never dropped: a watcher stops the server and removes
    // its files once this process has exited.
    SHARED.get_or_init(|| PgCluster::start("shared").until_exit())
}

/// The database name of a `postgresql://…/<name>[?…]` URL.
pub fn database_of(url: &str) -> &str {
    let tail = url.rsplit_once('/').map_or(url, |(_, tail)| tail);
    tail.split_once('?').map_or(tail, |(name, _)| name)
}

/// A new, empty database on the shared cluster.
pub fn fresh_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    shared().create_database(&name)
}

/// uid and gid of `user`.
pub(crate) fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("no user {user}"))
    };
    (id("-u"), id("-g"))
}
