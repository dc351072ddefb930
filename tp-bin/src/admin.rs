//! Admin commands: `user create`, `token create`.

use std::io::Read;
use std::process::ExitCode;

use secrecy::ExposeSecret;
use tp_core::auth::{NewUser, Role};
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
        ExitCode::from(exit::UNAVAILABLE)
    })
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
