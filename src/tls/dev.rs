//! A throwaway CA and node certificates, for `raftkv dev --tls` and tests: what the
//! secure set-up looks like, with nothing to install.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use super::TlsError;

/// The files of one generated CA and its certificates, under one directory.
pub struct DevPki {
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn gen_error(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("generating a certificate: {e}"))
}

fn write(path: &Path, text: &str) -> Result<(), TlsError> {
    std::fs::write(path, text).map_err(|e| TlsError::File { path: path.to_path_buf(), what: e.to_string() })
}

impl DevPki {
    /// A new CA named `name`, its certificate written to `dir/ca.pem`.
    pub fn create(dir: &Path, name: &str) -> Result<DevPki, TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::File { path: dir.to_path_buf(), what: e.to_string() })?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(gen_error)?;
        let cert = params.self_signed(&key).map_err(gen_error)?;
        write(&dir.join("ca.pem"), &cert.pem())?;
        Ok(DevPki { dir: dir.to_path_buf(), issuer: Issuer::new(params, key) })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name` (its common name and first DNS name), valid for server
    /// and client use on `hosts` too; written to `dir/NAME.pem` and `dir/NAME-key.pem`.
    /// Returns (cert, key).
    pub fn issue(&self, name: &str, hosts: &[&str]) -> Result<(PathBuf, PathBuf), TlsError> {
        let sans: Vec<String> = std::iter::once(name).chain(hosts.iter().copied()).map(str::to_string).collect();
        let mut params = CertificateParams::new(sans).map_err(gen_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(gen_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_error)?;
        let (cert_path, key_path) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}-key.pem")));
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}
