//! The connection a tunnel session runs on: plain TCP, or TLS over TCP.
//!
//! [`connect`] (the client) and [`accept`] (the server) both return a
//! [`Connection`], which [`crate::session::Session::start`] takes like any
//! other `AsyncRead + AsyncWrite`.
//!
//! TLS is rustls with the aws-lc-rs provider, chosen explicitly for every
//! config (never a process-wide default, so no other crate's choice can
//! change it). The server loads its certificate chain and key from PEM
//! ([`ServerTls`]); the client trusts the system's roots, a CA file, or, for
//! development only, anything ([`ClientTls`]).
//!
//! A mismatch fails fast with a sentence instead of hanging: [`accept`] looks
//! at the first byte a client sends (a TLS record starts with 0x16, a yamux
//! frame with 0x00), so a server that requires TLS can tell a plain client
//! so in the plain protocol ([`Accepted::NeedsTls`]), and a plain server
//! closes a TLS client at once; [`connect`] turns the failed handshake that
//! follows into [`ConnectError::NotTls`].

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::protocol::HANDSHAKE_TIMEOUT;

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The crypto provider of every TLS config Droid builds: aws-lc-rs.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Errors while loading certificates and keys, or building a TLS config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: io::Error,
    },
    /// A PEM file (or text) could not be parsed.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// What was being read (a path, or "the certificate").
        what: String,
        /// The parser's reason.
        reason: String,
    },
    /// No `CERTIFICATE` block where a chain or CA was expected.
    #[error("{what} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)")]
    NoCertificate {
        /// What was being read.
        what: String,
    },
    /// No private key where one was expected.
    #[error(
        "{what} holds no private key (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
    )]
    NoKey {
        /// What was being read.
        what: String,
    },
    /// The key cannot be used, or is not the certificate's.
    #[error("the key does not fit the certificate: {0}")]
    Key(String),
    /// The system has no root certificates rustls can use.
    #[error(
        "no trusted root certificates were found on this system; pass --ca FILE with the CA that signed the server's certificate"
    )]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(rustls::Error),
}

// Not `#[from]`: that would make the rustls error a `source` too, and a
// caller printing the chain would say it twice.
impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Rustls(e)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn pem_error(what: &str, e: &rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Every certificate in `pem`, in order.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

// ---------------------------------------------------------------- server

/// A server's certificate chain and key, ready for the control port and
/// the HTTPS listener. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    key: Arc<CertifiedKey>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("chain_len", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads a PEM certificate chain (the server's certificate first) and
    /// its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let cert_pem = read_file(cert)?;
        let key_pem = read_file(key)?;
        ServerTls::load(
            &cert_pem,
            &cert.display().to_string(),
            &key_pem,
            &key.display().to_string(),
        )
    }

    /// The same from PEM text in memory.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        ServerTls::load(cert, "the certificate", key, "the key")
    }

    fn load(
        cert_pem: &[u8],
        cert_what: &str,
        key_pem: &[u8],
        key_what: &str,
    ) -> Result<ServerTls, TlsError> {
        let chain = certificates(cert_pem, cert_what)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                what: key_what.to_string(),
            },
            e => pem_error(key_what, &e),
        })?;
        let provider = crypto_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| TlsError::Key(format!("{key_what} and {cert_what}: {e}")))?;
        let key = Arc::new(certified);
        let acceptor = TlsAcceptor::from(ServerTls::config_for(
            Arc::new(AlwaysThis(key.clone())),
            Vec::new(),
        )?);
        Ok(ServerTls { key, acceptor })
    }

    /// An acceptor that always shows this certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The certificate chain and key.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }

    /// A server config with aws-lc-rs, safe protocol versions, no client
    /// authentication, `resolver` choosing the certificate (it may refuse a
    /// handshake by returning `None`) and these ALPN protocols.
    pub fn config_for(
        resolver: Arc<dyn ResolvesServerCert>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }
}

/// Always the same certificate, whatever the client asks for.
#[derive(Debug)]
struct AlwaysThis(Arc<CertifiedKey>);

impl ResolvesServerCert for AlwaysThis {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What [`accept`] found on a new connection.
#[derive(Debug)]
pub enum Accepted {
    /// A connection ready for a session (TLS done, if required).
    Ready(Connection),
    /// The server requires TLS, but the client spoke plain Droid: the
    /// caller may tell it so in the plain protocol, then close.
    NeedsTls(TcpStream),
}

/// Why [`accept`] gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client sent nothing within the handshake timeout.
    #[error("the client sent nothing for {0:?}")]
    Silent(Duration),
    /// The client closed before sending anything.
    #[error("the client closed the connection before sending anything")]
    Closed,
    /// A TLS client on a port that does not serve TLS.
    #[error(
        "the client started TLS, but this control port serves plain connections (start the server with --tls-cert and --tls-key)"
    )]
    UnexpectedTls,
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The socket failed.
    #[error("{0}")]
    Io(io::Error),
}

/// Accepts a client on the control port: plain when `tls` is `None`, else
/// TLS. Either way the first byte decides what the client speaks, so a
/// mismatch is reported instead of read as garbage.
pub async fn accept(tcp: TcpStream, tls: Option<&ServerTls>) -> Result<Accepted, AcceptError> {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    let n = match timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(AcceptError::Io(e)),
        Err(_) => return Err(AcceptError::Silent(HANDSHAKE_TIMEOUT)),
    };
    if n == 0 {
        return Err(AcceptError::Closed);
    }
    let speaks_tls = first[0] == TLS_HANDSHAKE_RECORD;
    match (tls, speaks_tls) {
        (None, false) => Ok(Accepted::Ready(Connection::Plain(tcp))),
        (None, true) => Err(AcceptError::UnexpectedTls),
        (Some(_), false) => Ok(Accepted::NeedsTls(tcp)),
        (Some(tls), true) => match timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(Accepted::Ready(Connection::ServerTls(Box::new(stream)))),
            Ok(Err(e)) => Err(AcceptError::Handshake(e)),
            Err(_) => Err(AcceptError::Silent(HANDSHAKE_TIMEOUT)),
        },
    }
}

// ---------------------------------------------------------------- client

/// How a client checks the server's certificate. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    trust: Trust,
}

/// Whom a [`ClientTls`] trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's root certificates.
    System,
    /// Only the CAs of a given file.
    CaFile,
    /// Anything: no certificate is checked (development only).
    Insecure,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the operating system's root certificates.
    pub fn system() -> Result<ClientTls, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::NoRoots);
        }
        ClientTls::with_roots(roots, Trust::System)
    }

    /// Trusts only the CA certificates in a PEM file.
    pub fn from_ca_file(path: &Path) -> Result<ClientTls, TlsError> {
        let pem = read_file(path)?;
        ClientTls::ca(&pem, &path.display().to_string())
    }

    /// Trusts only the CA certificates in PEM text.
    pub fn from_ca_pem(pem: &[u8]) -> Result<ClientTls, TlsError> {
        ClientTls::ca(pem, "the CA")
    }

    fn ca(pem: &[u8], what: &str) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(pem, what)? {
            roots.add(cert)?;
        }
        ClientTls::with_roots(roots, Trust::CaFile)
    }

    fn with_roots(roots: RootCertStore, trust: Trust) -> Result<ClientTls, TlsError> {
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            trust,
        })
    }

    /// Accepts any certificate: the connection is encrypted but anyone in
    /// between can read and change it. For development only.
    pub fn insecure() -> Result<ClientTls, TlsError> {
        let provider = crypto_provider();
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            trust: Trust::Insecure,
        })
    }

    /// Whom this config trusts.
    pub fn trust(&self) -> Trust {
        self.trust
    }
}

/// The TLS a client speaks to a local app reached at an `https://`
/// target: ALPN offers what the client can speak there, and the app's certificate is
/// not checked, as other tunnels' agents do (a development server's is
/// usually made for it alone; the app is on the developer's side of the
/// tunnel, on a connection from the client).
/// `alpn`: the protocols offered, most wanted first.
pub fn app_connector(alpn: &[&[u8]]) -> Result<TlsConnector, TlsError> {
    let provider = crypto_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `--insecure`: every certificate passes, but the handshake's signatures
/// are still checked, so the session is at least encrypted end to end with
/// whoever answered.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not `HOST:PORT`.
    #[error("`{0}` is not HOST:PORT")]
    BadAddress(String),
    /// TCP failed.
    #[error("cannot reach the server {addr}: {error}")]
    Unreachable {
        /// The server.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// TCP or TLS took longer than the handshake timeout.
    #[error("the server {0} did not answer in time")]
    Timeout(String),
    /// The server's certificate failed verification.
    #[error("the server {addr} has a certificate this client does not trust: {reason}")]
    Untrusted {
        /// The server.
        addr: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// The server does not seem to speak TLS on that port.
    #[error(
        "the server {addr} did not answer the TLS handshake ({detail}): it may not serve TLS on this port; connect without --tls"
    )]
    NotTls {
        /// The server.
        addr: String,
        /// What happened instead.
        detail: String,
    },
    /// The TLS handshake failed otherwise.
    #[error("TLS with the server {addr} failed: {error}")]
    Tls {
        /// The server.
        addr: String,
        /// Why.
        error: io::Error,
    },
}

impl ConnectError {
    /// Whether retrying cannot help without a change of configuration (on
    /// either end): a certificate that is not trusted, or a server that
    /// does not speak TLS.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnectError::BadAddress(_)
                | ConnectError::Untrusted { .. }
                | ConnectError::NotTls { .. }
        )
    }
}

/// The host part of `HOST:PORT` (`[v6]:PORT` too).
fn host_of(addr: &str) -> Option<&str> {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    addr.rsplit_once(':')
        .map(|(h, _)| h)
        .filter(|h| !h.is_empty())
}

/// Connects to a server's control port, `HOST:PORT`, over TLS when `tls`
/// is given (the certificate must be valid for HOST). Everything, TCP and
/// TLS, happens within the handshake timeout.
pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<Connection, ConnectError> {
    let host = host_of(addr).ok_or_else(|| ConnectError::BadAddress(addr.to_string()))?;
    let server_name = match tls {
        Some(_) => Some(
            ServerName::try_from(host.to_string())
                .map_err(|_| ConnectError::BadAddress(addr.to_string()))?,
        ),
        None => None,
    };
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|error| ConnectError::Unreachable {
                addr: addr.to_string(),
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let (Some(tls), Some(name)) = (tls, server_name) else {
            return Ok(Connection::Plain(tcp));
        };
        match tls.connector.connect(name, tcp).await {
            Ok(stream) => Ok(Connection::ClientTls(Box::new(stream))),
            Err(e) => Err(handshake_error(addr, e)),
        }
    };
    timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(ConnectError::Timeout(addr.to_string())))
}

/// Sorts a failed client handshake into what the user should do about it.
fn handshake_error(addr: &str, e: io::Error) -> ConnectError {
    let addr = addr.to_string();
    let tls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::InvalidCertificate(reason)) => ConnectError::Untrusted {
            addr,
            reason: describe_certificate_error(reason),
        },
        // A plain Droid server reads the ClientHello as a broken yamux frame
        // and closes, maybe after a yamux GoAway that is no TLS record.
        Some(rustls::Error::InvalidMessage(m)) => ConnectError::NotTls {
            addr,
            detail: format!("it answered with something that is not TLS: {m:?}"),
        },
        Some(_) => ConnectError::Tls { addr, error: e },
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ConnectError::NotTls {
                addr,
                detail: "it closed the connection".into(),
            },
            _ => ConnectError::Tls { addr, error: e },
        },
    }
}

/// Why a certificate was refused, and what the user can do about it.
fn describe_certificate_error(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    const INSECURE: &str = "or --insecure for development";
    match e {
        C::UnknownIssuer | C::BadSignature => format!(
            "it is signed by an unknown CA (pass --ca FILE with the CA that signed it, {INSECURE})"
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "it is not valid for this host name (connect by a name the certificate covers, {INSECURE})"
        ),
        C::Expired | C::ExpiredContext { .. } => format!("it has expired ({INSECURE})"),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            format!("it is not valid yet; check this machine's clock ({INSECURE})")
        }
        C::Revoked => "it has been revoked".into(),
        other => format!("{other:?} ({INSECURE})"),
    }
}

// ---------------------------------------------------------------- connection

/// A connection a session runs on: TCP, or TLS over TCP from either end.
#[derive(Debug)]
pub enum Connection {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, this end the client.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS, this end the server.
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connection {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Connection::Plain(_))
    }

    /// The protocol the TLS handshake chose by ALPN (`h2`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Connection::Plain(_) => None,
            Connection::ClientTls(s) => s.get_ref().1.alpn_protocol(),
            Connection::ServerTls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

/// So an HTTP client's pool can hold connections to a local app (the
/// client's `https://` targets).
impl hyper_util::client::legacy::connect::Connection for Connection {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Connection::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Connection::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Connection::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Connection::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Connection::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Connection::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(s) => s.is_write_vectored(),
            Connection::ClientTls(s) => s.is_write_vectored(),
            Connection::ServerTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_flush(cx),
            Connection::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Connection::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Connection::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Connection::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A CA, and a server certificate for `names` it signed.
    fn pki(names: &[&str]) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // CAs of the same name would be told apart only by their signatures
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("droid test CA {n}"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    async fn echo_server(
        tls: Option<ServerTls>,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<Result<(), String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match accept(tcp, tls.as_ref()).await {
                Ok(Accepted::Ready(mut conn)) => {
                    let mut buf = [0u8; 5];
                    conn.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                    conn.write_all(&buf).await.map_err(|e| e.to_string())?;
                    conn.shutdown().await.map_err(|e| e.to_string())?;
                    Ok(())
                }
                Ok(Accepted::NeedsTls(_)) => Err("needs tls".into()),
                Err(e) => Err(e.to_string()),
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn tls_round_trip_with_the_right_ca() {
        let (ca, cert, key) = pki(&["localhost"]);
        let tls = ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let (addr, server) = echo_server(Some(tls)).await;
        let client = ClientTls::from_ca_pem(ca.as_bytes()).unwrap();
        let mut conn = connect(&format!("localhost:{}", addr.port()), Some(&client))
            .await
            .unwrap();
        assert!(conn.is_tls());
        conn.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_wrong_ca_or_name_is_refused_for_good_and_insecure_is_not() {
        let (_, cert, key) = pki(&["localhost"]);
        let (other_ca, _, _) = pki(&["localhost"]);
        let tls = ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let (addr, _server) = echo_server(Some(tls.clone())).await;
        let client = ClientTls::from_ca_pem(other_ca.as_bytes()).unwrap();
        let e = connect(&format!("localhost:{}", addr.port()), Some(&client))
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("unknown CA"), "{e}");

        let (addr, server) = echo_server(Some(tls)).await;
        let mut conn = connect(
            &format!("localhost:{}", addr.port()),
            Some(&ClientTls::insecure().unwrap()),
        )
        .await
        .unwrap();
        conn.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn mismatches_are_told_not_hung() {
        // a TLS client, a plain server
        let (addr, server) = echo_server(None).await;
        let e = connect(
            &format!("127.0.0.1:{}", addr.port()),
            Some(&ClientTls::insecure().unwrap()),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ConnectError::NotTls { .. }), "{e}");
        assert!(server.await.unwrap().unwrap_err().contains("started TLS"));

        // a plain client, a TLS server
        let (_, cert, key) = pki(&["localhost"]);
        let tls = ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let (addr, server) = echo_server(Some(tls)).await;
        let mut conn = connect(&addr.to_string(), None).await.unwrap();
        conn.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
        assert_eq!(server.await.unwrap().unwrap_err(), "needs tls");
    }

    #[test]
    fn bad_pem_says_what_is_missing() {
        let (_, cert, key) = pki(&["localhost"]);
        let e = ServerTls::from_pem(b"", key.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = ServerTls::from_pem(cert.as_bytes(), cert.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no private key"), "{e}");
        let (_, other_cert, _) = pki(&["localhost"]);
        let e = ServerTls::from_pem(other_cert.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = ServerTls::from_pem_files(Path::new("/nonexistent/cert.pem"), Path::new("/x"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }

    #[test]
    fn hosts_come_out_of_addresses() {
        assert_eq!(
            host_of("tunnel.example.com:7835"),
            Some("tunnel.example.com")
        );
        assert_eq!(host_of("[::1]:7835"), Some("::1"));
        assert_eq!(host_of("nope"), None);
    }
}
