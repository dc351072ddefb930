//! The HTTP client OTLP exports go through, with TLS through rustls.
//!
//! An `https://` collector is verified against the platform's roots, or the
//! CA file in `OTEL_EXPORTER_OTLP_CERTIFICATE`; a client certificate comes
//! from `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY`. These are the SDK's standard variables.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_otlp::{
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
};
use tp_core::tls::{ClientIdentity, Roots, Verify};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The TLS configuration for exports, when any endpoint is `https://`.
pub fn tls_config() -> Result<Option<rustls::ClientConfig>, String> {
    let https = [
        OTEL_EXPORTER_OTLP_ENDPOINT,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    ]
    .into_iter()
    .filter_map(env)
    .any(|url| {
        url.trim_start()
            .to_ascii_lowercase()
            .starts_with("https://")
    });
    if !https {
        return Ok(None);
    }
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
    // The error names the file that is wrong and why.
    tp_core::tls::client_config(&Verify::ChainAndName(roots), identity.as_ref())
        .map(Some)
        .map_err(|e| format!("OTLP TLS: {e}"))
}

/// The client one signal's exporter uses. Its timeout is the signal's
/// variable (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, …), else
/// `OTEL_EXPORTER_OTLP_TIMEOUT`, else the SDK's default, as the SDK resolves
/// it; the SDK does not cut off an export in flight, the client does.
pub fn http_client(
    tls: Option<rustls::ClientConfig>,
    signal_timeout_var: &str,
) -> Result<reqwest::blocking::Client, String> {
    let timeout = match [signal_timeout_var, OTEL_EXPORTER_OTLP_TIMEOUT]
        .into_iter()
        .find_map(|name| env(name).map(|ms| (name, ms)))
    {
        None => OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT,
        Some((name, ms)) => ms
            .trim()
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("{name}: {ms:?} is not a number of milliseconds"))?,
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
