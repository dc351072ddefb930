//! Certificates for TLS tests: a CA, a server certificate for `localhost`
//! (and not for `127.0.0.1`, so a host-name check can fail), a client
//! certificate, and an unrelated CA that trusts none of them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of one test PKI, in a directory readable by the service user.
pub struct TestPki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// Server certificate (`localhost` only) and key.
    pub server_cert: PathBuf,
    /// The server's private key (mode 0600, owned by the service user).
    pub server_key: PathBuf,
    /// Client certificate for `client_cn` and its key.
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
    /// The client certificate's common name (a PostgreSQL role for `cert` auth).
    pub client_cn: &'static str,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// A PKI in a fresh directory, its files owned by the user the test
    /// services run as (PostgreSQL and PgBouncer refuse a key others own).
    pub fn for_services() -> TestPki {
        let owner = crate::env::get()
            .pg_user
            .as_deref()
            .map(crate::postgres::user_ids);
        TestPki::generate(&crate::temp_dir("pki"), owner)
    }

    /// Generates a PKI into `dir`; files belong to `owner` (uid, gid) when given.
    pub fn generate(dir: &Path, owner: Option<(u32, u32)>) -> TestPki {
        use std::os::unix::fs::PermissionsExt;
        let ca_issuer = ca("tenant-plane test CA");
        let other = ca("unrelated test CA");
        let (server_cert, server_key) = leaf(
            &ca_issuer,
            &["localhost"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client_cn = "certuser";
        let (client_cert, client_key) = leaf(
            &ca_issuer,
            &[],
            client_cn,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pem");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown pem");
            }
            path
        };
        TestPki {
            ca: write("ca.crt", &ca_issuer.pem(), 0o644),
            other_ca: write("other-ca.crt", &other.pem(), 0o644),
            server_cert: write("server.crt", &server_cert, 0o644),
            server_key: write("server.key", &server_key, 0o600),
            client_cert: write("client.crt", &client_cert, 0o644),
            client_key: write("client.key", &client_key, 0o600),
            client_cn,
        }
    }
}
