//! `tenant-plane serve`: start the plane, bind, serve, drain on SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tp_core::{Config, StartupSchema, TenantPlane};
use tp_http::server::{self, Shutdown};

use crate::exit;

/// Runs the server until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: Config, telemetry: crate::telemetry::Telemetry) -> ExitCode {
    let http = config.http.clone();
    let dev_mode = config.dev_mode;
    let data_dir = config.data_dir.clone();
    let (plane, schema) = match TenantPlane::start(config).await {
        Ok(started) => started,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(exit::for_start_error(&e));
        }
    };
    match &schema {
        StartupSchema::Migrated(applied) if !applied.is_empty() => {
            tracing::info!(count = applied.len(), "schema migrated");
        }
        StartupSchema::NotMigrated => {
            tracing::warn!("TP_AUTO_MIGRATE=false: not ready until `tenant-plane migrate` has run");
        }
        _ => {}
    }
    let addr = SocketAddr::new(http.bind, http.port);
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        address = %local,
        tenant = plane.config().tenant_id.as_str(),
        vector_db = plane.config().vector_db(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    if dev_mode {
        crate::admin::bootstrap_dev_admin(&plane).await;
        print_dev_banner(local, &data_dir);
    }
    telemetry.observe(&plane);
    if telemetry.otlp() {
        tracing::info!("exporting metrics and traces over OTLP");
    }
    let metrics = match http.metrics_addr {
        None => None,
        Some(metrics_addr) => match TcpListener::bind(metrics_addr).await {
            Ok(listener) => {
                tracing::info!(
                    address = %listener.local_addr().unwrap_or(metrics_addr),
                    "metrics listening"
                );
                Some(tokio::spawn(server::serve_metrics(
                    listener,
                    telemetry.renderer(),
                )))
            }
            Err(e) => {
                eprintln!("error: cannot listen on {metrics_addr} (TP_METRICS_ADDR): {e}");
                return ExitCode::from(exit::UNAVAILABLE);
            }
        },
    };
    let api = tp_http::Api::new(plane);
    api.set_metrics_renderer(telemetry.renderer());
    let outcome = server::serve(listener, api, &http, shutdown_signal()).await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    telemetry.shutdown().await;
    match outcome {
        Ok(Shutdown::Clean) => {
            tracing::info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Ok(Shutdown::TimedOut { open_connections }) => {
            tracing::warn!(
                open_connections,
                "shutdown timeout reached; remaining requests cut off"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn print_dev_banner(addr: SocketAddr, data_dir: &std::path::Path) {
    let base = format!("http://{addr}");
    let secrets = data_dir.join("dev-secrets.env");
    eprintln!(
        "\n  tenant-plane is running in DEV MODE (embedded SQLite, generated secrets, loopback only)\n\
         \n    data:     {data}/tenant-plane.db\
         \n    secrets:  {secrets} (mode 0600; the admin password is TP_DEV_ADMIN_PASSWORD there)\
         \n    health:   curl {base}/api/health\
         \n\n  Get a token as the dev admin:\
         \n    curl -s {base}/api/auth/login -H 'content-type: application/json' \\\
         \n      -d \"{{\\\"username\\\":\\\"admin\\\",\\\"password\\\":\\\"$(sed -n 's/^TP_DEV_ADMIN_PASSWORD=//p' {secrets})\\\"}}\"\
         \n\n  Set TENANT_PLANE_DATABASE_URL, TENANT_ID, JWT_SECRET and ENCRYPTION_KEY for production.\n",
        data = data_dir.display(),
        secrets = secrets.display(),
    );
}
