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
    let _ = Config::from_env(&env);
    // The leak check is differential: each secret is replaced by a canary
    // of the same length that no fixed message contains, and the error must
    // not carry it. (Checking the original value flagged secrets that
    // happen to be part of a fixed message, like "ID: is re" in
    // "TENANT_ID: is required".)
    for secret in ["JWT_SECRET", "ENCRYPTION_KEY", "TP_JWT_SECRET_PREVIOUS"] {
        let Some(len) = env.get(secret).map(|v| v.trim().len()).filter(|n| *n >= 8) else {
            continue;
        };
        let canary: String = "QzX7".chars().cycle().take(len).collect();
        let mut probed = env.clone();
        probed.insert(secret.to_owned(), canary.clone());
        if let Err(e) = Config::from_env(&probed) {
            let message = e.to_string();
            assert!(!message.contains(&canary), "{secret} echoed in {message}");
        }
    }
});
