//! Configuration parsing never panics, and errors never echo secrets.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tp_core::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // KEY=VALUE lines; a database URL is always present so dev mode (which
    // writes secrets to disk) is never entered.
    let mut env: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.entry("TENANT_PLANE_DATABASE_URL".into())
        .or_insert_with(|| "postgresql://u:pw@h/db".into());
    if env["TENANT_PLANE_DATABASE_URL"].trim().is_empty() {
        return;
    }
    if let Err(e) = Config::from_env(&env) {
        let message = e.to_string();
        for secret in ["JWT_SECRET", "ENCRYPTION_KEY", "TP_JWT_SECRET_PREVIOUS"] {
            if let Some(value) = env.get(secret).filter(|v| v.trim().len() >= 8) {
                assert!(
                    !message.contains(value.trim()),
                    "{secret} echoed in {message}"
                );
            }
        }
    }
});
