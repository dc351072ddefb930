//! PgBouncer (Debian's 1.18) in front of a test PostgreSQL, run as the
//! unprivileged user: transaction or session pooling, optionally with TLS
//! for its clients.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::postgres::user_ids;
use crate::{env, free_port, temp_dir};

/// How PgBouncer hands server connections to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// One server connection per client connection.
    Session,
    /// A server connection per transaction.
    Transaction,
}

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PgBouncer {
    /// Starts PgBouncer for every database of the server on `upstream_port`
    /// (as user `postgres`, trust), with `pool_size` server connections per
    /// database; TLS for clients when `tls` is given.
    pub fn start(
        upstream_port: u16,
        mode: PoolMode,
        pool_size: u32,
        tls: Option<&crate::tls::TestPki>,
    ) -> PgBouncer {
        let dir = temp_dir("pgbouncer");
        let owner = env::get().pg_user.as_deref().map(user_ids);
        let port = free_port();
        let mode_name = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let tls_lines = tls.map_or(String::new(), |pki| {
            format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\n\
                 client_tls_key_file = {}\nclient_tls_ca_file = {}\n",
                pki.server_cert.display(),
                pki.server_key.display(),
                pki.ca.display()
            )
        });
        let config = format!(
            "[databases]\n* = host=127.0.0.1 port={upstream_port} user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\npool_mode = {mode_name}\n\
             max_client_conn = 2000\ndefault_pool_size = {pool_size}\n\
             pidfile = {dir}/pgbouncer.pid\nlogfile = {dir}/pgbouncer.log\n\
             ignore_startup_parameters = extra_float_digits\n{tls_lines}",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("write pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("write users.txt");
        let mut cmd = Command::new(&env::get().pgbouncer);
        cmd.arg(dir.join("pgbouncer.ini"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = owner {
            for entry in std::fs::read_dir(&dir)
                .expect("read pgbouncer dir")
                .flatten()
            {
                std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid)).expect("chown");
            }
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().expect("start pgbouncer");
        let bouncer = PgBouncer {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// A URL for database `db` through PgBouncer.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// PgBouncer's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// Keeps it running until this test process exits (for a `static`).
    fn until_exit(self) -> PgBouncer {
        const WATCH: &str = "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; kill \"$1\"";
        let pid = self.child.as_ref().map_or(0, Child::id);
        let _ = Command::new("sh")
            .args([
                "-c",
                WATCH,
                &std::process::id().to_string(),
                &pid.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PgBouncer in `mode` in front of the shared cluster, for the whole test run.
pub fn shared(mode: PoolMode) -> &'static PgBouncer {
    static TRANSACTION: OnceLock<PgBouncer> = OnceLock::new();
    static SESSION: OnceLock<PgBouncer> = OnceLock::new();
    let cell = match mode {
        PoolMode::Transaction => &TRANSACTION,
        PoolMode::Session => &SESSION,
    };
    cell.get_or_init(|| {
        PgBouncer::start(crate::postgres::shared().port, mode, 20, None).until_exit()
    })
}
