//! nginx in front of replicas, with the deployment's own `deploy/nginx.conf`.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{env, free_port, temp_dir};

/// A running nginx; killed when dropped.
pub struct Nginx {
    /// Port nginx listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

/// Replaces the lines between the marker lines `# BEGIN <name>` and
/// `# END <name>` (markers alone on their line; the file's comments mention them too).
fn replace_block(conf: &str, name: &str, replacement: &str) -> String {
    let (begin, end) = (format!("# BEGIN {name}"), format!("# END {name}"));
    let lines: Vec<&str> = conf.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == begin)
        .unwrap_or_else(|| panic!("no {begin} line"));
    let stop = lines
        .iter()
        .position(|l| l.trim() == end)
        .unwrap_or_else(|| panic!("no {end} line"));
    let mut out: Vec<&str> = lines[..=start].to_vec();
    out.extend(replacement.lines());
    out.extend(&lines[stop..]);
    out.join("\n") + "\n"
}

/// The parameters of the file's `server tenant-plane:3000 resolve ...;` line,
/// without the address and `resolve`.
fn server_parameters(conf: &str) -> String {
    let line = conf
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("server tenant-plane:"))
        .expect("an upstream server line");
    line.trim_end_matches(';')
        .split_whitespace()
        .skip(2)
        .filter(|word| *word != "resolve")
        .collect::<Vec<_>>()
        .join(" ")
}

impl Nginx {
    /// Starts nginx with the deployment's config, upstreams replaced by `replicas`.
    pub fn start(replicas: &[SocketAddr]) -> Nginx {
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf");
        let conf = std::fs::read_to_string(&source).expect("deploy/nginx.conf");
        let port = free_port();
        // Keep the file's own server parameters (max_fails, fail_timeout); only
        // the address changes, and `resolve` goes (these are literal IPs).
        let parameters = server_parameters(&conf);
        let servers: String = replicas
            .iter()
            .map(|a| format!("        server {a} {parameters};\n"))
            .collect();
        let conf = replace_block(&conf, "UPSTREAM SERVERS", servers.trim_end());
        let conf = replace_block(
            &conf,
            "LISTEN",
            &format!("        listen 127.0.0.1:{port};"),
        );
        let conf = replace_block(
            &conf,
            "HTTP PATHS",
            "    client_body_temp_path client_body_temp;\n    proxy_temp_path proxy_temp;\n    \
             fastcgi_temp_path fastcgi_temp;\n    uwsgi_temp_path uwsgi_temp;\n    \
             scgi_temp_path scgi_temp;\n    access_log access.log tenant_plane;",
        );
        let conf = conf.replace("worker_processes auto;", "worker_processes 1;");
        let dir = temp_dir("nginx");
        std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        let mut cmd = Command::new(&env::get().nginx);
        cmd.args([
            "-p",
            &dir.to_string_lossy(),
            "-e",
            "stderr",
            "-c",
            &dir.join("nginx.conf").to_string_lossy(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(user) = &env::get().pg_user {
            let ids = crate::postgres::user_ids(user);
            chown_tree(&dir, ids);
            cmd.uid(ids.0).gid(ids.1);
        }
        let child = cmd.spawn().expect("start nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { port, dir, child }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

fn chown_tree(dir: &std::path::Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown");
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid)).expect("chown");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits. A SIGKILL
        // would leave the workers running, orphaned, still accepting on
        // the port.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
