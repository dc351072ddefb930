//! `tenant-plane`: the Tenant Plane server and its admin commands.

mod admin;
mod env;
mod healthcheck;
mod logging;
mod otlp;
mod serve;
mod telemetry;
mod transfer;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tp_core::Config;

// The request path allocates many small, short-lived buffers (JSON bodies,
// vectors, rows) across worker threads; glibc's malloc took about 15% of a
// replica's CPU on vector search, mimalloc much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes (sysexits.h).
mod exit {
    /// Bad configuration.
    pub const CONFIG: u8 = 64;
    /// A dependency is unavailable.
    pub const UNAVAILABLE: u8 = 69;
    /// The license does not allow it (missing, invalid or expired).
    pub const NOPERM: u8 = 77;

    /// The exit code for a failed start: license, configuration or dependency.
    pub fn for_start_error(e: &tp_core::Error) -> u8 {
        match e.kind() {
            tp_core::ErrorKind::LicenseRequired => NOPERM,
            tp_core::ErrorKind::InvalidInput => CONFIG,
            _ => UNAVAILABLE,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "tenant-plane",
    version,
    about = "Tenant Plane: users, sessions, vector search and secrets for one tenant"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Exit 0 when the local plane's health endpoint answers 200.
    Healthcheck {
        /// URL to check; default http://127.0.0.1:$PORT/api/health.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Validate the configuration and print it with secrets redacted.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Issue tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Inspect a license.
    License {
        #[command(subcommand)]
        action: LicenseAction,
    },
    /// Manage encrypted secrets.
    Secrets {
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Write collections as JSON Lines (to move them between databases, or back them up).
    ///
    /// Progress goes to stderr. A file is written under NAME.partial and
    /// renamed when complete.
    Export {
        /// Only this collection (repeatable); default every collection.
        #[arg(long = "collection")]
        collections: Vec<String>,
        /// File to write ("-" or none: standard output).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Read an export into the database: missing collections are created,
    /// documents upserted by id (running it again is safe).
    ///
    /// On SQLite, stop the replica first (the file is locked while it runs).
    Import {
        /// File to read ("-" or none: standard input).
        #[arg(long)]
        input: Option<std::path::PathBuf>,
        /// Documents per transaction (1 to 1000).
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
    },
}

#[derive(Subcommand)]
enum LicenseAction {
    /// Verify a license and print its claims and state (never the key itself).
    ///
    /// The key comes from --key-file, else ATLASAI_LICENSE_KEY; the public key
    /// from --public-key-file, else CP_LICENSE_PUBLIC_KEY. TENANT_ID, when
    /// set, must match the license's tenant. Exit 0 only for a license that
    /// verifies and has not expired past the grace period.
    Inspect {
        /// File holding the license JWT ("-" for standard input).
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
        /// File holding the PEM public key.
        #[arg(long)]
        public_key_file: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum SecretsAction {
    /// Re-encrypt every secret under ENCRYPTION_KEY (the previous key is
    /// TP_ENCRYPTION_KEY_PREVIOUS). Safe while replicas serve; run it again
    /// to resume after an interruption.
    Rotate {
        /// Rows read per batch.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user; the password comes from --password-stdin, TP_USER_PASSWORD, or is generated and printed.
    Create {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Role: admin, member or viewer.
        #[arg(long, default_value = "viewer", conflicts_with = "admin")]
        role: tp_core::auth::Role,
        /// Shorthand for --role admin (bootstrap the first admin).
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Open a session for a user and print its access and refresh tokens.
    Create {
        /// Login name.
        #[arg(long)]
        username: String,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check every variable and exit non-zero naming the first bad one.
    Check {
        /// Also connect to every configured service (database, Redis) and
        /// report each; exit 69 when one cannot be reached.
        #[arg(long)]
        probe: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match tp_core::config::worker_threads(&env::ProcessEnv) {
        Ok(Some(threads)) => {
            builder.worker_threads(threads);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command.unwrap_or(Command::Serve)))
}

async fn run(command: Command) -> ExitCode {
    if let Command::Healthcheck { url, timeout_ms } = command {
        let url = url.unwrap_or_else(|| {
            let port = std::env::var(tp_core::config::vars::PORT).unwrap_or_else(|_| "3000".into());
            format!("http://127.0.0.1:{port}/api/health")
        });
        return match healthcheck::check(&url, Duration::from_millis(timeout_ms)).await {
            Ok(200) => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("unhealthy: {url} answered {status}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::License {
        action:
            LicenseAction::Inspect {
                key_file,
                public_key_file,
            },
    } = command
    {
        return admin::inspect_license(key_file.as_deref(), public_key_file.as_deref());
    }
    let config = match Config::from_env(&env::ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let json_logs = logging::wants_json(config.dev_mode);
    if let Command::Serve = command {
        let telemetry = match telemetry::init(json_logs) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: telemetry: {e}");
                return ExitCode::from(exit::CONFIG);
            }
        };
        return serve::run(config, telemetry).await;
    }
    logging::init(json_logs);
    match command {
        Command::Serve => unreachable!("handled above"),
        Command::Migrate => migrate(config).await,
        Command::Config {
            action: ConfigAction::Check { probe },
        } => {
            println!("configuration is valid\n{config:#?}");
            if probe {
                admin::probe_services(&config).await
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::User {
            action:
                UserAction::Create {
                    username,
                    role,
                    admin,
                    password_stdin,
                },
        } => {
            let role = if admin {
                tp_core::auth::Role::Admin
            } else {
                role
            };
            let source = if password_stdin {
                admin::PasswordSource::Stdin
            } else if std::env::var_os("TP_USER_PASSWORD").is_some() {
                admin::PasswordSource::Env
            } else {
                admin::PasswordSource::Generate
            };
            admin::create_user(config, username, role, source).await
        }
        Command::Token {
            action: TokenAction::Create { username },
        } => admin::create_token(config, username).await,
        Command::Secrets {
            action: SecretsAction::Rotate { batch_size },
        } => admin::rotate_secrets(config, batch_size).await,
        Command::Export {
            collections,
            output,
        } => transfer::export(config, collections, output).await,
        Command::Import { input, batch_size } => transfer::import(config, input, batch_size).await,
        Command::Healthcheck { .. } | Command::License { .. } => unreachable!("handled above"),
    }
}

async fn migrate(config: Config) -> ExitCode {
    let db = match tp_core::db::Database::open(&config.database) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    match db.migrate().await {
        Ok(applied) if applied.is_empty() => {
            println!("schema is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!(
                "applied {} migration(s): {}",
                applied.len(),
                applied.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: migration failed: {e}");
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}
