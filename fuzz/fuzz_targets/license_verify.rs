//! License parsing never panics: arbitrary tokens against a real public
//! key, and arbitrary bytes as the public key PEM.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tp_core::license::{License, LicensePublicKey};

const PUBLIC: &str = include_str!("../../tests/fixtures/license-test-public.pem");

fn key() -> &'static LicensePublicKey {
    static KEY: OnceLock<LicensePublicKey> = OnceLock::new();
    KEY.get_or_init(|| LicensePublicKey::from_pem(PUBLIC).expect("fixture key"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First byte picks the target, so one corpus covers both.
    if text.starts_with('-') {
        let _ = LicensePublicKey::from_pem(text);
    } else {
        let _ = License::verify(text, key(), Some("acme-corp"), 1_800_000_000);
    }
});
