//! `x-request-id`: kept when a client or proxy sends a sane one, generated otherwise.

use http::HeaderMap;

/// Header carrying the request id both ways.
pub const HEADER: &str = "x-request-id";

/// The incoming id if it is 1–128 visible ASCII characters, else a new UUID.
pub(crate) fn from_headers(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h).len(), 32);
        h.insert(HEADER, "abc-123".parse().unwrap());
        assert_eq!(from_headers(&h), "abc-123");
        h.insert(HEADER, "has space".parse().unwrap());
        assert_ne!(from_headers(&h), "has space");
        h.insert(HEADER, "x".repeat(129).parse().unwrap());
        assert_eq!(from_headers(&h).len(), 32);
    }
}
