//! `REDIS_URL` and the TLS files, read into fred's configuration.
//!
//! ```text
//! redis[s]://[[user]:password@]host[:port][/db]
//! redis[s]-sentinel://[[user]:password@]host[:port],host[:port],…/service[/db]
//! redis[s]-cluster://[[user]:password@]host[:port],host[:port],…
//! ```
//!
//! An `s` after `redis` means TLS, always verified: the chain against
//! `TP_REDIS_CA_FILE` (or the platform's roots) and the host name. A TLS
//! scheme gets TLS or no connection, never plaintext.

use std::path::PathBuf;

use fred::types::config::{
    ClusterDiscoveryPolicy, Config as FredConfig, Server, ServerConfig, TlsConfig, TlsConnector,
    TlsHostMapping,
};
use percent_encoding::percent_decode_str;

use crate::config::vars;
use crate::tls::{self, ClientIdentity, Roots, Verify};

/// The TLS files of a `rediss` URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// `TP_REDIS_CA_FILE`: PEM roots; the platform's when unset.
    pub ca_file: Option<PathBuf>,
    /// `TP_REDIS_CERT_FILE` and `TP_REDIS_KEY_FILE`: a client certificate.
    pub client: Option<ClientIdentity>,
}

/// The deployment a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a managed primary endpoint).
    Single,
    /// A primary found through Sentinel.
    Sentinel,
    /// A Redis Cluster.
    Cluster,
}

/// A parsed `REDIS_URL`.
#[derive(Debug)]
pub(crate) struct RedisTarget {
    pub(crate) topology: Topology,
    pub(crate) tls: bool,
    pub(crate) fred: FredConfig,
}

/// What is wrong, and with which variable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// The URL itself.
    Url(String),
    /// A TLS file or setting, and the variable that names it.
    Tls(&'static str, String),
}

/// Parses `raw` with `files`; messages never repeat the password.
pub(crate) fn parse(raw: &str, files: &RedisTlsFiles) -> Result<RedisTarget, TargetError> {
    let url = |m: String| TargetError::Url(m);
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| url("must start with redis://, rediss://, redis-sentinel:// or redis-cluster:// (or their rediss- forms)".into()))?;
    let (topology, tls) = match scheme {
        "redis" => (Topology::Single, false),
        "rediss" => (Topology::Single, true),
        "redis-sentinel" => (Topology::Sentinel, false),
        "rediss-sentinel" => (Topology::Sentinel, true),
        "redis-cluster" => (Topology::Cluster, false),
        "rediss-cluster" => (Topology::Cluster, true),
        other => {
            return Err(url(format!(
                "unknown scheme {other:?}: use redis, rediss, redis-sentinel, rediss-sentinel, redis-cluster or rediss-cluster"
            )));
        }
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(url(
            "takes no query parameters; TLS files come from TP_REDIS_CA_FILE, TP_REDIS_CERT_FILE and TP_REDIS_KEY_FILE".into(),
        ));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((info, hosts)) => (Some(info), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = info.split_once(':').unwrap_or((info, ""));
            let decode = |s: &str| {
                percent_decode_str(s)
                    .decode_utf8()
                    .map(|v| v.into_owned())
                    .map_err(|_| url("its credentials are not UTF-8".into()))
            };
            let user = Some(decode(user)?).filter(|u| !u.is_empty());
            let pass = Some(decode(pass)?).filter(|p| !p.is_empty());
            (user, pass)
        }
    };
    let default_port = if topology == Topology::Sentinel {
        26379
    } else {
        6379
    };
    let servers = hosts
        .split(',')
        .map(|h| server(h, default_port).map_err(url))
        .collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let database = |s: Option<&&str>| -> Result<Option<u8>, TargetError> {
        s.map(|db| {
            db.parse::<u8>().map_err(|_| {
                url(format!(
                    "database must be a number from 0 to 255, got {db:?}"
                ))
            })
        })
        .transpose()
    };
    let (server, database) = match topology {
        Topology::Single => {
            if servers.len() != 1 {
                return Err(url(
                    "names several hosts: use redis-sentinel:// or redis-cluster:// for those"
                        .into(),
                ));
            }
            if segments.len() > 1 {
                return Err(url("path must be at most a database number".into()));
            }
            let server = servers
                .into_iter()
                .next()
                .map(|server| ServerConfig::Centralized { server });
            (server, database(segments.first())?)
        }
        Topology::Sentinel => {
            let Some(service) = segments.first() else {
                return Err(url(
                    "redis-sentinel:// needs the primary's service name as its path (…/mymaster)"
                        .into(),
                ));
            };
            if segments.len() > 2 {
                return Err(url("path must be /service[/database]".into()));
            }
            let server = ServerConfig::Sentinel {
                hosts: servers,
                service_name: (*service).to_owned(),
            };
            (Some(server), database(segments.get(1))?)
        }
        Topology::Cluster => {
            if !segments.is_empty() {
                return Err(url(
                    "redis-cluster:// takes no path: a cluster has only database 0".into(),
                ));
            }
            let server = ServerConfig::Clustered {
                hosts: servers,
                policy: ClusterDiscoveryPolicy::default(),
            };
            (Some(server), None)
        }
    };
    let tls_config = if tls {
        let roots = files.ca_file.clone().map_or(Roots::System, Roots::File);
        let client = tls::client_config(&Verify::ChainAndName(roots), files.client.as_ref())
            .map_err(|e| {
                let names_ca = files
                    .ca_file
                    .as_ref()
                    .is_some_and(|ca| e.contains(&*ca.to_string_lossy()));
                let var = if files.client.is_some() && !names_ca {
                    vars::REDIS_CERT_FILE
                } else {
                    vars::REDIS_CA_FILE
                };
                TargetError::Tls(var, e)
            })?;
        Some(TlsConfig {
            connector: TlsConnector::from(client),
            // Cluster nodes are announced by IP address; their certificates
            // are checked against the host name the URL gave.
            hostnames: if topology == Topology::Cluster {
                TlsHostMapping::DefaultHost
            } else {
                TlsHostMapping::None
            },
        })
    } else {
        if files.ca_file.is_some() || files.client.is_some() {
            let var = if files.ca_file.is_some() {
                vars::REDIS_CA_FILE
            } else {
                vars::REDIS_CERT_FILE
            };
            return Err(TargetError::Tls(
                var,
                "is set, but REDIS_URL is not a TLS URL (use rediss://)".into(),
            ));
        }
        None
    };
    Ok(RedisTarget {
        topology,
        tls,
        fred: FredConfig {
            server: server.unwrap_or_default(),
            username,
            password,
            database,
            tls: tls_config,
            ..FredConfig::default()
        },
    })
}

/// `host[:port]` or `[v6]:port`.
fn server(text: &str, default_port: u16) -> Result<Server, String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("host {text:?} has an unclosed ["))?;
        (host, tail.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("names no host".to_owned());
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port of {host} must be 1-65535, got {p:?}"))?,
    };
    Ok(Server::new(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> RedisTarget {
        parse(raw, &RedisTlsFiles::default()).unwrap_or_else(|e| panic!("{raw}: {e:?}"))
    }

    fn url_error(raw: &str) -> String {
        match parse(raw, &RedisTlsFiles::default()) {
            Err(TargetError::Url(m)) => m,
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn each_form_names_its_servers() {
        let single = ok("redis://:s3cret@cache:6380/2");
        assert_eq!(
            single.fred.server,
            ServerConfig::Centralized {
                server: Server::new("cache", 6380)
            }
        );
        assert_eq!(
            (single.fred.password.as_deref(), single.fred.database),
            (Some("s3cret"), Some(2))
        );
        let sentinel = ok("redis-sentinel://user:pw@s1,s2:26380/mymaster/1");
        assert_eq!(
            sentinel.fred.server,
            ServerConfig::Sentinel {
                hosts: vec![Server::new("s1", 26379), Server::new("s2", 26380)],
                service_name: "mymaster".into(),
            }
        );
        assert_eq!(sentinel.fred.username.as_deref(), Some("user"));
        assert_eq!(sentinel.fred.database, Some(1));
        let cluster = ok("redis-cluster://n1:7000,n2:7001,[::1]:7002");
        let ServerConfig::Clustered { hosts, .. } = &cluster.fred.server else {
            panic!("{:?}", cluster.fred.server)
        };
        assert_eq!(hosts.len(), 3);
        assert_eq!(cluster.topology, Topology::Cluster);
        assert!(!cluster.tls && cluster.fred.tls.is_none());
    }

    #[test]
    fn a_tls_scheme_always_gets_tls() {
        for raw in [
            "rediss://cache:6380",
            "rediss-sentinel://s1/mymaster",
            "rediss-cluster://n1:7000",
        ] {
            match parse(raw, &RedisTlsFiles::default()) {
                Ok(target) => assert!(target.tls && target.fred.tls.is_some(), "{raw}"),
                // A machine without a trust store cannot build the roots.
                Err(TargetError::Tls(_, m)) => assert!(m.contains("trust store"), "{raw}: {m}"),
                Err(e) => panic!("{raw}: {e:?}"),
            }
        }
        let files = RedisTlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            client: None,
        };
        assert!(matches!(
            parse("rediss://cache", &files),
            Err(TargetError::Tls(vars::REDIS_CA_FILE, m)) if m.contains("/nonexistent/ca.pem")
        ));
        assert!(matches!(
            parse("redis://cache", &files),
            Err(TargetError::Tls(vars::REDIS_CA_FILE, m)) if m.contains("not a TLS URL")
        ));
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (raw, words) in [
            ("cache:6379", "must start with"),
            ("http://cache", "unknown scheme"),
            ("memcached://cache", "unknown scheme"),
            ("redis://a,b", "several hosts"),
            ("redis-sentinel://s1,s2", "service name"),
            ("redis-cluster://", "names no host"),
            ("redis-cluster://n1:7000/3", "takes no path"),
            ("redis://:pw-9x7@cache:99999", "port of cache"),
            ("redis://cache/300", "0 to 255"),
            ("redis://cache?ssl_cert_reqs=none", "no query parameters"),
        ] {
            let message = url_error(raw);
            assert!(message.contains(words), "{raw}: {message}");
            assert!(!message.contains("pw-9x7"), "{raw}: {message}");
        }
    }
}
