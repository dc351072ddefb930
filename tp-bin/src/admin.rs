//! Admin commands: `user create`, `token create`, `license inspect`, `secrets rotate`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use secrecy::ExposeSecret;
use tp_core::auth::{NewUser, Role};
use tp_core::config::vars;
use tp_core::{Config, TenantPlane};

use crate::exit;

/// Where a new user's password comes from.
pub enum PasswordSource {
    /// The first line of standard input.
    Stdin,
    /// `TP_USER_PASSWORD`.
    Env,
    /// Generated and printed once.
    Generate,
}

fn read_password(source: PasswordSource) -> Result<(String, bool), String> {
    match source {
        PasswordSource::Stdin => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
            Ok((input.lines().next().unwrap_or_default().to_owned(), false))
        }
        PasswordSource::Env => std::env::var("TP_USER_PASSWORD")
            .map(|p| (p, false))
            .map_err(|_| "TP_USER_PASSWORD is not set".to_owned()),
        PasswordSource::Generate => {
            let mut bytes = [0u8; 18];
            getrandom(&mut bytes)?;
            Ok((bytes.iter().map(|b| format!("{b:02x}")).collect(), true))
        }
    }
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("no randomness: {e}"))
}

async fn plane(config: Config) -> Result<std::sync::Arc<TenantPlane>, ExitCode> {
    TenantPlane::start_admin(config).await.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(exit::for_start_error(&e))
    })
}

/// `tenant-plane license inspect`: verifies a license and prints what it says.
pub fn inspect_license(key_file: Option<&Path>, public_key_file: Option<&Path>) -> ExitCode {
    let (token, key_source) = match read_input(key_file, vars::LICENSE_KEY) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let (pem, _) = match read_input(public_key_file, vars::LICENSE_PUBLIC_KEY) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let tenant = std::env::var(vars::TENANT_ID)
        .ok()
        .filter(|t| !t.is_empty());
    match tp_core::license::inspect(token.trim(), &pem, tenant.as_deref()) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if report["state"] == "expired" {
                eprintln!("error: the license expired and its grace period is over");
                return ExitCode::from(exit::NOPERM);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The message names where the key came from, never the key.
            let message = e
                .to_string()
                .replacen("license:", &format!("{key_source}:"), 1);
            eprintln!("error: {message}");
            ExitCode::from(exit::NOPERM)
        }
    }
}

/// Reads a file ("-" for stdin) or, without one, the variable `var`; with
/// a name for messages.
fn read_input(file: Option<&Path>, var: &str) -> Result<(String, String), String> {
    match file {
        Some(path) if path == Path::new("-") => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            Ok((input, "stdin".to_owned()))
        }
        Some(path) => std::fs::read_to_string(path)
            .map(|text| (text, path.display().to_string()))
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        None => std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v, var.to_owned()))
            .ok_or_else(|| format!("{var}: is not set (or pass a file)")),
    }
}

/// `tenant-plane secrets rotate`.
pub async fn rotate_secrets(config: Config, batch_size: usize) -> ExitCode {
    let plane = match plane(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let keys = plane.secrets().keys();
    println!(
        "re-encrypting secrets under key {} (previous key: {})",
        keys.current_key_id(),
        keys.previous_key_id().unwrap_or("none configured")
    );
    match plane.secrets().rotate(batch_size).await {
        Ok(report) => {
            println!(
                "rotated {}, already current {}, failed {}",
                report.rotated, report.already_current, report.failed
            );
            if report.failed > 0 {
                eprintln!(
                    "error: {} secret(s) could not be re-encrypted: their key is not \
                     configured or their ciphertext does not authenticate; they are unchanged",
                    report.failed
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: rotation stopped (run it again to resume): {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tenant-plane user create`.
pub async fn create_user(
    config: Config,
    username: String,
    role: Role,
    source: PasswordSource,
) -> ExitCode {
    let (password, generated) = match read_password(source) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let plane = match plane(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    match plane
        .auth()
        .create_user(NewUser {
            username,
            password: password.clone(),
            role,
        })
        .await
    {
        Ok(user) => {
            println!(
                "created user {} ({}) with role {}",
                user.username, user.id, user.role
            );
            if generated {
                println!("password: {password}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tenant-plane token create`: a session for a user, without their password.
pub async fn create_token(config: Config, username: String) -> ExitCode {
    let plane = match plane(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    match plane.auth().open_session_for(&username).await {
        Ok(pair) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&pair).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Dev mode: creates `admin` with the generated password when there are no users.
pub async fn bootstrap_dev_admin(plane: &TenantPlane) {
    let Some(password) = plane.config().dev_admin_password.as_ref() else {
        return;
    };
    match plane.auth().count_users().await {
        Ok(0) => {
            let new = NewUser {
                username: "admin".into(),
                password: password.expose_secret().to_owned(),
                role: Role::Admin,
            };
            if let Err(e) = plane.auth().create_user(new).await {
                tracing::warn!(error = %e, "could not create the dev admin user");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not count users"),
    }
}

/// `config check --probe`: connects to each configured service and says,
/// one line each, whether it answered and if not why (never a secret).
pub async fn probe_services(config: &Config) -> ExitCode {
    use std::time::{Duration, Instant};
    let timeout = config.database.connect_timeout.min(Duration::from_secs(5));
    let mut failed = false;
    let kind = if matches!(
        config.database.url,
        tp_core::config::DatabaseUrl::Postgres(_)
    ) {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    match tp_core::db::Database::open_shared(&config.database) {
        Err(e) => {
            failed = true;
            println!("probe database ({kind}): FAILED: {}", reason(&e));
        }
        Ok(db) => {
            let probe = db.probe(timeout).await;
            if probe.reachable {
                let schema = if probe.migrations_pending {
                    "migrations pending (run tenant-plane migrate)"
                } else {
                    "schema current"
                };
                println!("probe database ({kind}): ok, {schema}");
            } else {
                failed = true;
                println!(
                    "probe database ({kind}): FAILED: {}",
                    probe.error.unwrap_or_default()
                );
            }
        }
    }
    match &config.redis {
        None => println!("probe redis: not configured"),
        Some(redis_config) => match tp_core::redis::Redis::start(redis_config) {
            Err(e) => {
                failed = true;
                println!("probe redis: FAILED: {}", reason(&e));
            }
            Ok(redis) => {
                let deadline = Instant::now() + timeout;
                while !redis.is_connected() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if redis.is_connected() {
                    println!("probe redis: ok");
                } else {
                    failed = true;
                    let why = redis.last_error().unwrap_or_else(|| {
                        format!("not connected within {} ms", timeout.as_millis())
                    });
                    println!("probe redis: FAILED: {why}");
                }
            }
        },
    }
    if failed {
        ExitCode::from(exit::UNAVAILABLE)
    } else {
        ExitCode::SUCCESS
    }
}

/// An error's reason for the operator: an internal error's detail (never a
/// secret), or the message.
fn reason(e: &tp_core::Error) -> String {
    match e {
        tp_core::Error::Internal { detail } => detail.clone(),
        other => other.to_string(),
    }
}
