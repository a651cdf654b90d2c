//! TLS connectors, built once per distinct [`TlsOptions`] and cached, and the facts the probe
//! reads from the server's leaf certificate.
//!
//! Building an OpenSSL context loads the system trust store, which costs milliseconds; doing it
//! per probe would cap throughput far below thousands of probes per second.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use native_tls::{Certificate, Identity};
use tokio_native_tls::TlsConnector;

use super::CertInfo;
use crate::config::TlsOptions;

/// Connectors by TLS options. A site whose options cannot be built gets its error text cached
/// too, so a bad PEM costs one attempt to parse, not one per probe.
pub(crate) struct Connectors {
    /// Options every field at its default: most sites. Used without taking the lock.
    default: TlsConnector,
    custom: Mutex<HashMap<TlsOptions, Result<TlsConnector, String>>>,
}

impl Connectors {
    pub(crate) fn new() -> Result<Connectors, native_tls::Error> {
        Ok(Connectors {
            default: TlsConnector::from(native_tls::TlsConnector::new()?),
            custom: Mutex::new(HashMap::new()),
        })
    }

    /// The connector for `opts`; `Err` carries why the options cannot be used.
    pub(crate) fn get(&self, opts: &TlsOptions) -> Result<TlsConnector, String> {
        if is_default(opts) {
            return Ok(self.default.clone());
        }
        if let Some(found) = self.lock().get(opts) {
            return found.clone();
        }
        // Built outside the lock: other sites' probes must not wait for a trust store load.
        let built = build(opts).map(TlsConnector::from);
        self.lock().entry(opts.clone()).or_insert(built).clone()
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TlsOptions, Result<TlsConnector, String>>> {
        // The map holds no invariant a panicking holder could break.
        self.custom.lock()
    }
}

fn is_default(opts: &TlsOptions) -> bool {
    opts.ca_pem.is_none()
        && opts.client_cert_pem.is_none()
        && opts.client_key_pem.is_none()
        && !opts.insecure
}

/// System roots plus every certificate in `ca_pem`, the client identity if given, and
/// verification switched off for `insecure`.
fn build(opts: &TlsOptions) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(pem) = &opts.ca_pem {
        let certs = Certificate::stack_from_pem(pem).map_err(|e| format!("ca_pem: {e}"))?;
        if certs.is_empty() {
            return Err("ca_pem: no certificate found".to_owned());
        }
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    match (&opts.client_cert_pem, &opts.client_key_pem) {
        (Some(cert), Some(key)) => {
            builder.identity(client_identity(cert, key)?);
        }
        (None, None) => {}
        _ => return Err("client_cert_pem and client_key_pem must be given together".to_owned()),
    }
    if opts.insecure {
        builder.danger_accept_invalid_certs(true);
        builder.danger_accept_invalid_hostnames(true);
    }
    builder.build().map_err(|e| e.to_string())
}

/// The client identity of a PEM certificate (chain, leaf first) and its PEM private key: PKCS#8
/// (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`),
/// unencrypted. The key must belong to the leaf. The error says which file is wrong and how;
/// configuration loading calls this too, so a bad pair is refused before any probe.
pub(crate) fn client_identity(cert: &[u8], key: &[u8]) -> Result<Identity, String> {
    use openssl::pkey::PKey;
    use openssl::x509::X509;
    let holds = |pem: &[u8], label: &str| pem.windows(label.len()).any(|w| w == label.as_bytes());
    let chain = X509::stack_from_pem(cert).unwrap_or_default();
    let Some(leaf) = chain.first() else {
        return Err(if holds(cert, "PRIVATE KEY-----") {
            "client_cert holds a private key, not a certificate (are client_cert and client_key \
             swapped?)"
                .to_owned()
        } else {
            "client_cert holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned()
        });
    };
    if holds(key, "BEGIN ENCRYPTED PRIVATE KEY") || holds(key, "Proc-Type: 4,ENCRYPTED") {
        return Err(
            "client_key is encrypted; sitewatch takes an unencrypted key (e.g. `openssl pkey -in \
             key.pem -out plain.pem`, kept readable only by sitewatch)"
                .to_owned(),
        );
    }
    // A callback that gives no passphrase: OpenSSL's default asks for one on the terminal.
    let private = PKey::private_key_from_pem_callback(key, |_| Ok(0)).map_err(|_| {
        if holds(key, "BEGIN CERTIFICATE") {
            "client_key holds a certificate, not a private key (are client_cert and client_key \
             swapped?)"
                .to_owned()
        } else {
            "client_key holds no private key this reads: PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 \
             (BEGIN RSA PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY)"
                .to_owned()
        }
    })?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&private))
        .unwrap_or(false);
    if !matches {
        return Err("client_key does not belong to client_cert (their public keys differ)".into());
    }
    let pkcs8 = private
        .private_key_to_pem_pkcs8()
        .map_err(|e| format!("client_key: {e}"))?;
    Identity::from_pkcs8(cert, &pkcs8).map_err(|e| format!("client certificate: {e}"))
}

/// Expiry, subject and issuer of a DER certificate; `None` if it does not parse.
pub(crate) fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0)?;
    Some(CertInfo {
        not_after,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
    })
}

/// The leaf certificate a completed handshake saw.
pub(crate) fn peer_cert_info<S>(stream: &tokio_native_tls::TlsStream<S>) -> Option<CertInfo>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let cert = stream.get_ref().peer_certificate().ok()??;
    cert_info(&cert.to_der().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectors_are_cached_per_options() {
        let c = Connectors::new().unwrap();
        assert!(c.get(&TlsOptions::default()).is_ok());
        assert_eq!(c.cached(), 0, "default options use the prebuilt connector");
        let insecure = TlsOptions {
            insecure: true,
            ..TlsOptions::default()
        };
        assert!(c.get(&insecure).is_ok());
        assert!(c.get(&insecure).is_ok());
        assert_eq!(c.cached(), 1);
        let bad = TlsOptions {
            ca_pem: Some(b"not a pem".to_vec()),
            ..TlsOptions::default()
        };
        assert!(c.get(&bad).unwrap_err().starts_with("ca_pem"));
        assert!(c.get(&bad).is_err());
        assert_eq!(c.cached(), 2);
        let half = TlsOptions {
            client_key_pem: Some(b"x".to_vec()),
            ..TlsOptions::default()
        };
        assert!(c.get(&half).unwrap_err().contains("together"));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(cert_info(b"\x30\x03\x02\x01\x00"), None);
    }
}
