//! Access-token verification never panics, whatever the bytes.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tp_core::Config;
use tp_core::auth::Jwt;

fn jwt() -> &'static Jwt {
    static JWT: OnceLock<Jwt> = OnceLock::new();
    JWT.get_or_init(|| {
        let env: BTreeMap<&str, &str> = BTreeMap::from([
            ("TENANT_ID", "fuzz"),
            ("JWT_SECRET", "fuzz-secret-fuzz-secret-fuzz-secret-0123"),
            ("TP_JWT_SECRET_PREVIOUS", "older-secret-older-secret-older-secret-01"),
            ("ENCRYPTION_KEY", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"),
            ("TENANT_PLANE_DATABASE_URL", "postgresql://u@h/db"),
        ]);
        let config = Config::from_env(&env).expect("fuzz config");
        Jwt::new(&config.auth, &config.tenant_id)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = jwt().verify(token);
    }
});
