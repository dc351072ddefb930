//! The process environment as a configuration source.

use tp_core::config::EnvSource;

/// Reads `std::env`; non-UTF-8 values count as unset.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}
