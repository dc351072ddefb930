//! The HTTP client OTLP exports go through, with TLS through rustls.
//!
//! An `https://` collector is verified against the platform's roots, or the
//! CA file in `OTEL_EXPORTER_OTLP_CERTIFICATE`; a client certificate comes
//! from `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY`. These are the SDK's standard variables.

use std::path::PathBuf;
use std::time::Duration;

use tp_core::tls::{ClientIdentity, Roots, Verify};

const ENDPOINT_VARS: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
];
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client every exporter shares.
pub fn http_client() -> Result<reqwest::blocking::Client, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let timeout = match env("OTEL_EXPORTER_OTLP_TIMEOUT") {
        None => DEFAULT_TIMEOUT,
        Some(ms) => ms.trim().parse().map(Duration::from_millis).map_err(|_| {
            format!("OTEL_EXPORTER_OTLP_TIMEOUT: {ms:?} is not a number of milliseconds")
        })?,
    };
    let https = ENDPOINT_VARS
        .iter()
        .filter_map(|name| env(name))
        .any(|url| {
            url.trim_start()
                .to_ascii_lowercase()
                .starts_with("https://")
        });
    let tls = if https {
        let roots = env("OTEL_EXPORTER_OTLP_CERTIFICATE")
            .map_or(Roots::System, |file| Roots::File(PathBuf::from(file)));
        let identity = match (
            env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            env("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert: cert.into(),
                key: key.into(),
            }),
            _ => {
                return Err("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and \
                            OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
                    .to_owned());
            }
        };
        let config = tp_core::tls::client_config(&Verify::ChainAndName(roots), identity.as_ref())
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"))?;
        Some(config)
    } else {
        None
    };
    // reqwest is built without a bundled crypto provider; the process uses
    // ring everywhere, and an http:// client still asks for the default one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // reqwest's blocking client owns a runtime of its own, which may not be
    // created on a thread that is already driving one.
    std::thread::spawn(move || {
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(config) = tls {
            builder = builder.use_preconfigured_tls(config);
        }
        builder.build()
    })
    .join()
    .map_err(|_| "OTLP HTTP client: the thread building it panicked".to_owned())?
    .map_err(|e| format!("OTLP HTTP client: {e}"))
}
