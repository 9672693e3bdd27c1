//! TLS between the nodes of a cluster, keyed by the cluster secret alone.
//!
//! Every node derives the same Ed25519 key from the secret (its seed is the
//! secret through Argon2id, [`seed`]) and the same self-signed
//! certificate from that key: rcgen's defaults are fixed dates and a serial
//! number taken from the public key, and Ed25519 signatures are
//! deterministic, so the certificate's bytes are the same on every node.
//! Each side of a link shows that certificate and accepts exactly that
//! certificate from the other (TLS 1.3, mutual). A node that does not know
//! the secret can neither answer nor connect, and whoever reads the link
//! sees only ciphertext, and cannot replay it.
//!
//! Anyone who reaches a peer port is shown the certificate (TLS shows it
//! before the client has proved anything), and the certificate's public
//! key is a function of the secret: a guess can be checked offline. So a
//! secret must be long and not repetitive ([`check_secret`]: 32 characters
//! or more, `droid cluster secret` prints one), and the derivation is slow
//! (Argon2id, 19 MiB and two passes) so that each guess costs a great deal.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name in the certificate, and the one a node asks for.
const PEER_NAME: &str = "droid-peer";

/// The PKCS#8 (v1) DER of an Ed25519 private key, before its 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why the nodes' TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS between the nodes: {0}")]
pub struct PeerTlsError(String);

/// Both ends of the nodes' TLS.
#[derive(Clone)]
pub(crate) struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl PeerTls {
    /// The TLS of every node that knows `secret`; a weak secret is refused.
    pub(crate) fn from_secret(secret: &str) -> Result<PeerTls, PeerTlsError> {
        let failed = |e: &dyn std::fmt::Display| PeerTlsError(e.to_string());
        check_secret(secret).map_err(PeerTlsError)?;
        let seed = seed(secret).map_err(|e| failed(&e))?;
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| failed(&e))?;
        let cert = rcgen::CertificateParams::new(vec![PEER_NAME.to_string()])
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| failed(&e))?;
        let cert = cert.der().clone();
        let provider = droid_core::transport::crypto_provider();
        let pinned = Arc::new(Pinned {
            cert: cert.clone(),
            provider: provider.clone(),
        });
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| failed(&e))?
            .with_client_cert_verifier(pinned.clone())
            .with_single_cert(vec![cert.clone()], PrivateKeyDer::from(pkcs8.clone_key()))
            .map_err(|e| failed(&e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| failed(&e))?
            .dangerous()
            .with_custom_certificate_verifier(pinned)
            .with_client_auth_cert(vec![cert], PrivateKeyDer::from(pkcs8))
            .map_err(|e| failed(&e))?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The node's side of a connection another node opened.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// This node's side of a connection it opened to another node.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(PEER_NAME)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, stream).await
    }
}

/// The fewest characters a cluster secret may have.
pub const MIN_SECRET_LEN: usize = 32;

/// Refuses a cluster secret that a guess could find: fewer than
/// [`MIN_SECRET_LEN`] characters, or fewer than 10 different ones (`aaaa…`,
/// `abcabc…`). The sentence says how to make a good one.
pub fn check_secret(secret: &str) -> Result<(), String> {
    let distinct = secret
        .chars()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let why = if secret.chars().count() < MIN_SECRET_LEN {
        format!(
            "it has {} characters, fewer than {MIN_SECRET_LEN}",
            secret.chars().count()
        )
    } else if distinct < 10 {
        format!("it repeats a few characters ({distinct} different ones)")
    } else {
        return Ok(());
    };
    Err(format!(
        "the cluster secret is too weak to key the TLS between the nodes: {why}; \
         make one with `droid cluster secret` and give every node the same"
    ))
}

/// The Ed25519 seed of every node that knows `secret`: Argon2id (m = 19
/// MiB, t = 2, p = 1) with a salt fixed for the protocol, since every node
/// must find the same one.
fn seed(secret: &str) -> Result<[u8; 32], argon2::Error> {
    let params = argon2::Params::new(19 * 1024, 2, 1, Some(32))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut seed = [0u8; 32];
    kdf.hash_password_into(secret.as_bytes(), b"droid-peer-key/3", &mut seed)?;
    Ok(seed)
}

/// Accepts the one certificate every node of the cluster shows, from
/// either side, with the handshake's signatures checked as usual.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> bool {
        intermediates.is_empty() && end_entity.as_ref() == self.cert.as_ref()
    }

    fn wrong() -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates) {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(Pinned::wrong()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates) {
            true => Ok(ClientCertVerified::assertion()),
            false => Err(Pinned::wrong()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A link between two nodes' TLS over loopback: the bytes through it,
    /// or the handshake's error on either side.
    async fn link(server: &PeerTls, client: &PeerTls) -> Result<Vec<u8>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server.clone();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = server.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; 5];
            tls.read_exact(&mut got).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(got)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let sent = async {
            let mut tls = client.connect(tcp).await.map_err(|e| e.to_string())?;
            tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())
        }
        .await;
        let got = accepting.await.unwrap();
        sent?;
        got
    }

    const SECRET: &str = "3f7c0b9a1e5d4c2b8a6f0e9d7c5b3a19";

    #[tokio::test]
    async fn nodes_with_the_same_secret_connect_and_others_cannot() {
        let a = PeerTls::from_secret(SECRET).unwrap();
        let b = PeerTls::from_secret(SECRET).unwrap();
        assert_eq!(link(&a, &b).await.unwrap(), b"hello");
        let stranger = PeerTls::from_secret("3f7c0b9a1e5d4c2b8a6f0e9d7c5b3a18").unwrap();
        assert!(link(&a, &stranger).await.is_err(), "a stranger connected");
        assert!(link(&stranger, &a).await.is_err(), "a stranger answered");
    }

    #[test]
    fn weak_secrets_are_refused_with_a_way_to_make_a_good_one() {
        for weak in [
            "",
            "a",
            "the nodes' secret",
            &"a".repeat(64),
            &"abc".repeat(20),
        ] {
            let e = check_secret(weak).unwrap_err();
            assert!(e.contains("droid cluster secret"), "{e}");
            assert!(PeerTls::from_secret(weak).is_err());
        }
        check_secret(SECRET).unwrap();
        check_secret("correct horse battery staple, twice").unwrap();
    }
}
