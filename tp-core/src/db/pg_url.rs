//! A PostgreSQL URL with libpq's TLS parameters, which tokio-postgres does
//! not read itself: `sslmode` (all five of libpq's modes but `allow`),
//! `sslrootcert` (a file, or `system`), `sslcert` and `sslkey`.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, ClientIdentity, Roots, Verify};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, unverified; plaintext otherwise (the default).
    Prefer,
    /// TLS or nothing; verified against `sslrootcert` when one is given.
    Require,
    /// TLS with a certificate chain to `sslrootcert`.
    VerifyCa,
    /// TLS with the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(
                "sslmode=allow is not supported (it tries plaintext first); use prefer or require"
                    .to_owned(),
            ),
            other => Err(format!(
                "sslmode must be disable, prefer, require, verify-ca or verify-full, got {other:?}"
            )),
        }
    }
}

/// A parsed URL: the tokio-postgres configuration and the TLS connector.
pub(crate) struct PgTarget {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) mode: SslMode,
    /// How the server's certificate is checked when TLS is used.
    pub(crate) verify: Verify,
    pub(crate) tls: MakeRustlsConnect,
}

impl PgTarget {
    /// True when TLS may be used without checking whom it is with.
    pub(crate) fn unverified(&self) -> bool {
        self.mode != SslMode::Disable && self.verify == Verify::Nothing
    }
}

#[derive(Default)]
struct TlsParams {
    mode: Option<String>,
    root: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// True when the URL carries `pgbouncer=true`.
pub(crate) fn asks_for_pgbouncer(raw: &str) -> bool {
    raw.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p == "pgbouncer=true"))
}

/// Parses `raw`; the error says what is wrong and never repeats the URL.
pub(crate) fn parse(raw: &str) -> Result<PgTarget, String> {
    let (base, query) = raw.split_once('?').unwrap_or((raw, ""));
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8"))?
            .into_owned();
        match key {
            "sslmode" => params.mode = Some(value),
            "sslrootcert" => params.root = Some(value),
            "sslcert" => params.cert = Some(value),
            "sslkey" => params.key = Some(value),
            // Other clients' switch for PgBouncer in transaction mode.
            "pgbouncer" => {}
            "sslpassword" | "sslcrl" | "sslcrldir" | "sslcertmode" | "sslnegotiation" => {
                return Err(format!("{key} is not supported"));
            }
            _ => kept.push(pair),
        }
    }
    let mode = match &params.mode {
        Some(m) => SslMode::parse(m)?,
        None => SslMode::Prefer,
    };
    let roots = params.root.as_deref().map(|r| match r {
        "system" => Roots::System,
        file => Roots::File(PathBuf::from(file)),
    });
    let verify = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => Verify::ChainAndName(roots),
        // libpq: `require` with a root file behaves as `verify-ca`.
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Verify::Chain(roots),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!(
                "sslmode={} needs sslrootcert=<CA file> (or sslrootcert=system for the platform's roots)",
                params.mode.as_deref().unwrap_or_default()
            ));
        }
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) => Verify::Nothing,
    };
    let identity = match (params.cert, params.key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert: cert.into(),
            key: key.into(),
        }),
        (None, None) => None,
        _ => return Err("sslcert and sslkey go together: give both or neither".to_owned()),
    };
    let client = tls::client_config(&verify, identity.as_ref())?;

    let wire = match mode {
        SslMode::Disable => WireMode::Disable,
        SslMode::Prefer => WireMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
    };
    let rebuilt = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = rebuilt.parse().map_err(|e| format!("{e}"))?;
    config.ssl_mode(wire);
    Ok(PgTarget {
        config,
        mode,
        verify,
        tls: MakeRustlsConnect::new(client),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        parse(url).err().unwrap_or_else(|| panic!("{url} parsed"))
    }

    #[test]
    fn modes_follow_libpq() {
        let cases = [
            ("postgresql://u@h/db", SslMode::Prefer, Verify::Nothing),
            (
                "postgresql://u@h/db?sslmode=disable",
                SslMode::Disable,
                Verify::Nothing,
            ),
            (
                "postgresql://u@h/db?sslmode=require",
                SslMode::Require,
                Verify::Nothing,
            ),
            (
                "postgresql://u@h/db?sslmode=require&sslrootcert=system",
                SslMode::Require,
                Verify::Chain(Roots::System),
            ),
            (
                "postgresql://u@h/db?sslmode=verify-ca&sslrootcert=system",
                SslMode::VerifyCa,
                Verify::Chain(Roots::System),
            ),
            (
                "postgresql://u@h1:5432,h2:5433/db?sslmode=verify-full&sslrootcert=system&target_session_attrs=read-write",
                SslMode::VerifyFull,
                Verify::ChainAndName(Roots::System),
            ),
        ];
        for (url, mode, verify) in cases {
            let Ok(target) = parse(url) else {
                // A machine without a trust store cannot build `system`.
                assert!(url.contains("system"), "{url}");
                continue;
            };
            assert_eq!((target.mode, &target.verify), (mode, &verify), "{url}");
        }
        let multi = parse(
            "postgresql://u@h1:5432,h2:5433/db?sslmode=require&target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(multi.config.get_hosts().len(), 2);
        assert_eq!(multi.config.get_ssl_mode(), WireMode::Require);
        assert!(multi.unverified());
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        assert!(err("postgresql://u@h/db?sslmode=verify-everything").contains("sslmode must be"));
        assert!(err("postgresql://u@h/db?sslmode=allow").contains("not supported"));
        assert!(err("postgresql://u@h/db?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(err("postgresql://u@h/db?sslcert=/c.pem").contains("go together"));
        assert!(
            err("postgresql://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
                .contains("/nonexistent/ca.pem")
        );
        assert!(err("postgresql://u@h/db?sslcrl=x").contains("sslcrl is not supported"));
    }

    #[test]
    fn errors_never_repeat_the_password() {
        for url in [
            "postgresql://u:hunter2secret@h/db?sslmode=nope",
            "postgresql://u:hunter2secret@h/db?sslmode=verify-ca&sslrootcert=/nonexistent",
            "postgresql://u:hunter2secret@h/db?bogus_option=1",
        ] {
            assert!(!err(url).contains("hunter2secret"), "{url}");
        }
    }
}
