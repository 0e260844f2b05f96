//! Certificates made for one test: an authority, a server certificate for 127.0.0.1 signed by
//! it, a client certificate signed by it, and a second authority that signed none of them
//! (to be trusted by mistake) but signed a client certificate of its own (to be presented by
//! mistake). Written as PEM files into a temporary directory, removed on drop:
//! `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`, `client-key.pem`, `other-ca.pem`,
//! `other-client.pem`, `other-client-key.pem`.

use std::path::{Path, PathBuf};

use fencelock::lock::TlsOptions;
use fencelock::process::ServerTls;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-certs-")
            .tempdir()
            .expect("a temporary directory");
        let ca = authority("fencelock test CA");
        let other = authority("some other CA");
        let server = leaf(&["127.0.0.1", "localhost"], "etcd", &ca);
        let client = leaf(&[], "fencelock test client", &ca);
        let stranger = leaf(&[], "a client of some other CA", &other);
        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).expect("write a PEM file");
        };
        write("ca.pem", ca.pem());
        write("other-ca.pem", other.pem());
        write("server.pem", server.0);
        write("server-key.pem", server.1);
        write("client.pem", client.0);
        write("client-key.pem", client.1);
        write("other-client.pem", stranger.0);
        write("other-client-key.pem", stranger.1);
        TestCerts { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcdctl's flags for the client this authority signed: `--cacert=`, `--cert=`,
    /// `--key=`, in that order.
    pub fn client_flags(&self) -> Vec<String> {
        let file = |name: &str| self.path(name).display().to_string();
        vec![
            format!("--cacert={}", file("ca.pem")),
            format!("--cert={}", file("client.pem")),
            format!("--key={}", file("client-key.pem")),
        ]
    }

    /// The same as etcdctl's environment variables.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let file = |name: &str| self.path(name).display().to_string();
        vec![
            ("ETCDCTL_CACERT", file("ca.pem")),
            ("ETCDCTL_CERT", file("client.pem")),
            ("ETCDCTL_KEY", file("client-key.pem")),
        ]
    }

    /// A cluster whose members require clients this authority signed.
    pub fn mutual_tls(&self) -> fencelock::process::EtcdOptions {
        fencelock::process::EtcdOptions {
            tls: Some(self.server()),
            ..Default::default()
        }
    }

    /// What an etcd member needs for mutual TLS, and how a client it accepts connects.
    pub fn server(&self) -> ServerTls {
        ServerTls {
            cert_file: self.path("server.pem"),
            key_file: self.path("server-key.pem"),
            trusted_ca_file: self.path("ca.pem"),
            client: self.client(),
        }
    }

    /// A client the server accepts: the authority and the client certificate.
    pub fn client(&self) -> TlsOptions {
        TlsOptions::from_files(
            Some(&self.path("ca.pem")),
            Some(&self.path("client.pem")),
            Some(&self.path("client-key.pem")),
        )
        .expect("the test certificates are readable")
    }
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key"))
        .expect("a self-signed CA")
}

/// A certificate (PEM) and its key (PEM) for `names`, good for both ends of a connection
/// (etcd also dials itself with its server certificate).
fn leaf(names: &[&str], common_name: &str, ca: &CertifiedIssuer<'_, KeyPair>) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}
