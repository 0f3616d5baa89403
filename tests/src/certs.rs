//! Test certificates, generated when a test runs (rcgen): a CA, a server certificate for
//! `localhost` and 127.0.0.1, client certificates, written as PEM files into a temporary
//! directory. Nothing here is ever committed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that signs server and client certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    pub fn server(&self, common_name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose subject's common name is `common_name`.
    pub fn client(&self, common_name: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// The PEM files of one test: a CA, the server's certificate and key, one client's.
pub struct TlsFiles {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Files signed by `ca`, the client certificate's common name being `client_cn`.
    pub fn new(ca: &TestCa, client_cn: &str) -> TlsFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let files = TlsFiles {
            ca: path.join("ca.pem"),
            server_cert: path.join("server.pem"),
            server_key: path.join("server.key"),
            client_cert: path.join("client.pem"),
            client_key: path.join("client.key"),
            dir: path,
            _dir: dir,
        };
        write(&files.ca, &ca.pem());
        let (cert, key) = ca.server("skein test server");
        write(&files.server_cert, &cert);
        write(&files.server_key, &key);
        let (cert, key) = ca.client(client_cn);
        write(&files.client_cert, &cert);
        write(&files.client_key, &key);
        files
    }

    /// Writes another file into the directory (a second CA, another client's key).
    pub fn extra(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        write(&path, contents);
        path
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, as certificate
/// renewal tools do: a reader never sees half a file.
pub fn write(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write PEM");
    std::fs::rename(&tmp, path).expect("rename PEM");
}

/// The path as a `&str` (the test directories are UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
