//! Certificates made for a test with rcgen: a CA, and a server
//! certificate it signed for `localhost`, the test domain and its wildcard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use droid_client::ClientTls;
use droid_server::ServerTls;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::DOMAIN;

/// A CA and a server certificate it signed for `localhost`, the test domain
/// and `*.` the test domain, all PEM.
pub struct Pki {
    /// The CA's certificate.
    pub ca: String,
    /// The server's certificate.
    pub cert: String,
    /// The server's key.
    pub key: String,
}

impl Pki {
    pub fn new() -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("droid test CA {} {n}", std::process::id()),
        );
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let names = vec![
            "localhost".to_string(),
            DOMAIN.to_string(),
            format!("*.{DOMAIN}"),
        ];
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Pki {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn server_tls(&self) -> ServerTls {
        ServerTls::from_pem(self.cert.as_bytes(), self.key.as_bytes()).unwrap()
    }

    pub fn client_tls(&self) -> ClientTls {
        ClientTls::from_ca_pem(self.ca.as_bytes()).unwrap()
    }

    /// Writes `cert.pem`, `key.pem` and `ca.pem` into `dir`; their paths.
    pub fn write(&self, dir: &std::path::Path) -> (String, String, String) {
        let put = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        (
            put("cert.pem", &self.cert),
            put("key.pem", &self.key),
            put("ca.pem", &self.ca),
        )
    }

    /// A rustls client that trusts this CA, for visitors.
    pub fn visitor_connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let der = CertificateDer::from_pem_slice(self.ca.as_bytes()).unwrap();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A TLS terminator in front of `upstream`: a loopback port that
    /// speaks TLS with this server certificate (offering `alpn` by ALPN)
    /// and passes the bytes inside to `upstream`; the port.
    pub async fn terminator(&self, upstream: std::net::SocketAddr, alpn: &[&[u8]]) -> u16 {
        use rustls::pki_types::PrivateKeyDer;
        let certs = vec![CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        port
    }
}
