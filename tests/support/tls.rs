//! A private PKI made in the test (rcgen): a root CA, an intermediate, and server certificates
//! for the TLS failures `edgewatch check` must tell apart.
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test harness: panics are the failures"
)]

use std::path::PathBuf;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// What a server certificate file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Leaf then intermediate: what a correct setup serves.
    FullChain,
    /// The leaf alone: a chain without its intermediate.
    LeafOnly,
    /// A full chain whose leaf expired in 2020.
    Expired,
    /// A leaf that signs itself.
    SelfSigned,
}

pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The root, for `--ca-file`.
    pub ca_file: PathBuf,
    inter_pem: String,
    inter: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2024, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("edgewatch test root");
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root = Issuer::new(root_params, root_key);
        let inter_key = KeyPair::generate().unwrap();
        let inter_params = ca_params("edgewatch test intermediate");
        let inter_cert = inter_params.signed_by(&inter_key, &root).unwrap();
        let ca_file = dir.path().join("root.pem");
        std::fs::write(&ca_file, root_cert.pem()).unwrap();
        Self {
            dir,
            ca_file,
            inter_pem: inter_cert.pem(),
            inter: Issuer::new(inter_params, inter_key),
        }
    }

    /// A server certificate for `name` and its key, as files (`cert.pem` holds what the
    /// server sends).
    pub fn server(&self, name: &str, served: Served) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if served == Served::Expired {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2020, 6, 1);
        } else {
            p.not_before = date_time_ymd(2024, 1, 1);
            p.not_after = date_time_ymd(2039, 1, 1);
        }
        let pem = match served {
            Served::SelfSigned => p.self_signed(&key).unwrap().pem(),
            Served::LeafOnly => p.signed_by(&key, &self.inter).unwrap().pem(),
            Served::FullChain | Served::Expired => {
                format!(
                    "{}{}",
                    p.signed_by(&key, &self.inter).unwrap().pem(),
                    self.inter_pem
                )
            }
        };
        let tag = format!("{name}-{served:?}");
        let cert = self.dir.path().join(format!("{tag}.crt"));
        let keyf = self.dir.path().join(format!("{tag}.key"));
        std::fs::write(&cert, pem).unwrap();
        std::fs::write(&keyf, key.serialize_pem()).unwrap();
        (cert, keyf)
    }
}
