//! Who the peer is: a per-run self-signed certificate on each side, pinned by the SHA-256 the
//! other side learned from the authenticated punch (UDP) or the authenticated TCP offer.
//! Shared by the QUIC stream and the TLS-over-TCP stream.
//!
//! There is no CA and no name to check. The verifiers below replace only the chain and name
//! checks; the TLS 1.3 handshake signatures are still verified by rustls' own helpers, so
//! presenting a copied certificate without its private key does not get anyone in.

use crate::error::StreamError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Certificates are pinned, so the name is never checked; rustls only needs a valid one.
pub(crate) const SERVER_NAME: &str = "punchraw";

/// A per-run identity: a self-signed ECDSA P-256 certificate and its private key.
pub struct Identity {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A fresh certificate and key, made for this run only; the peer learns its fingerprint
    /// through the authenticated punch or TCP offer.
    pub fn generate() -> Result<Self, StreamError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| StreamError::Identity(e.to_string()))?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()),
        })
    }

    /// The same certificate and key again (for a second transport that must show the peer
    /// the certificate it already pinned).
    pub fn duplicate(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }

    /// SHA-256 of the certificate DER: what the peer pins.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// The certificate in DER, as shown to the peer in the handshake.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert
    }
}

impl fmt::Debug for Identity {
    // The private key must not end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field(
                "fingerprint",
                &crate::core::hex::encode(&self.fingerprint()),
            )
            .finish_non_exhaustive()
    }
}

pub(crate) fn fingerprint(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

/// Pins one certificate by its SHA-256, for either side of the handshake.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pub(crate) expected: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// What the last rejected certificate hashed to, so the error can name it.
    mismatch: Mutex<Option<[u8; 32]>>,
}

impl PinVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            Ok(())
        } else {
            *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    pub(crate) fn take_mismatch(&self) -> Option<[u8; 32]> {
        self.mismatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The handshake-signature checks, the same for either side: rustls' own, with the provider's
/// algorithms (only the certificate chain check is replaced by the pin).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.tls12(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.schemes()
        }
    };
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for PinVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

impl PinVerifier {
    pub(crate) fn new(expected: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        PinVerifier {
            expected,
            provider,
            mismatch: Mutex::new(None),
        }
    }
}

/// A TLS 1.3 client that presents `me` and accepts only the pinned peer; no resumption (a
/// resumed session would skip the certificate check, and every run must pin afresh).
pub(crate) fn client_tls(
    me: &Identity,
    verifier: Arc<PinVerifier>,
    provider: Arc<CryptoProvider>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![me.cert.clone()],
            PrivateKeyDer::Pkcs8(me.key.clone_key()),
        )?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(tls)
}

/// The server side of [`client_tls`]: the client must present the pinned certificate.
pub(crate) fn server_tls(
    me: &Identity,
    verifier: Arc<PinVerifier>,
    provider: Arc<CryptoProvider>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![me.cert.clone()],
            PrivateKeyDer::Pkcs8(me.key.clone_key()),
        )?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tls)
}
