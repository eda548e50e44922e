//! Certificates generated at test time (nothing committed): a CA, server certificates for
//! `localhost`/`127.0.0.1`, and client certificates whose SANs are the given names. For
//! unit tests and, with the `testing` feature, the end-to-end tests.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// PEM files of one certificate in a directory.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("write CA");
        path.to_path_buf()
    }

    /// A certificate for `names` (DNS names, IP addresses, or URIs such as SPIFFE ids),
    /// as (cert PEM, key PEM).
    pub fn issue(&self, names: &[&str], server: bool) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        for name in names {
            let san = if let Ok(ip) = name.parse() {
                SanType::IpAddress(ip)
            } else if name.contains("://") {
                SanType::URI((*name).try_into().expect("URI SAN"))
            } else {
                SanType::DnsName((*name).try_into().expect("DNS SAN"))
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    /// Issues a certificate for `names` into `dir/<stem>.pem` and `dir/<stem>.key`
    /// (replacing them, as a rotation would).
    pub fn issue_files(&self, dir: &Path, stem: &str, names: &[&str], server: bool) -> CertFiles {
        let (cert, key) = self.issue(names, server);
        let files = CertFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        // Key first, then the certificate: a reader between the two writes sees a mismatch
        // and keeps its previous configuration.
        std::fs::write(&files.key, key).expect("write key");
        std::fs::write(&files.cert, cert).expect("write cert");
        files
    }
}
