//! Test certificates: a CA of the test's own and leaf certificates it signs (rcgen), written
//! as PEM files for attitude, Python's ssl module and swaks.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority made for one test.
pub struct TestCa {
    /// Its certificate (PEM), to trust.
    pub ca_file: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "attitude test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write ca.pem");
        TestCa { ca_file, cert, key }
    }

    /// Issues a certificate with common name `cn` for `attitude.test`, `localhost` and
    /// 127.0.0.1, and writes it to `cert` and its key to `key` (each written whole, then
    /// renamed into place, as a deployment tool would).
    pub fn issue(&self, cn: &str, cert: &Path, key: &Path) {
        let names = vec![
            "attitude.test".to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = params
            .signed_by(&leaf_key, &self.cert, &self.key)
            .expect("leaf certificate");
        write_atomic(key, leaf_key.serialize_pem().as_bytes());
        write_atomic(cert, leaf.pem().as_bytes());
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write PEM");
    std::fs::rename(&tmp, path).expect("rename PEM");
}
