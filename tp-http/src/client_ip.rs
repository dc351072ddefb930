//! The client's address: the TCP peer, or what a trusted proxy says it forwarded.

use std::net::IpAddr;

use http::HeaderMap;
use tp_core::config::IpNet;

/// The client IP for rate limiting and session records.
///
/// `X-Forwarded-For` and `X-Real-IP` are believed only when the TCP peer is
/// a trusted proxy. In `X-Forwarded-For` the nearest untrusted hop (from the
/// right) is the client: entries further left were written by the client
/// itself and can be forged.
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    if !contains(trusted, peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if let Some(client) = forwarded.iter().rev().find(|ip| !contains(trusted, **ip)) {
        return Some(*client);
    }
    if let Some(first) = forwarded.first() {
        return Some(*first);
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(Some(peer))
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| {
                s.parse()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .unwrap()
            })
            .collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        let ip = client_ip(Some("9.9.9.9".parse().unwrap()), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(ip, Some("9.9.9.9".parse().unwrap()));
    }

    #[test]
    fn trusted_proxy_chain_yields_nearest_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        let ip = client_ip(
            Some("10.0.0.2".parse().unwrap()),
            &h,
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn trusted_proxy_with_real_ip_only() {
        let h = headers(&[("x-real-ip", "1.2.3.4")]);
        let ip = client_ip(
            Some("127.0.0.1".parse().unwrap()),
            &h,
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(ip, Some("1.2.3.4".parse().unwrap()));
        let ip = client_ip(
            Some("127.0.0.1".parse().unwrap()),
            &HeaderMap::new(),
            &nets(&["127.0.0.1"]),
        );
        assert_eq!(ip, Some("127.0.0.1".parse().unwrap()));
    }
}
