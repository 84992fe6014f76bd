//! TLS on the client port, driven sans-IO: the connection tasks own the
//! socket and the buffers; this module turns ciphertext into plaintext and
//! back with `rustls`, so the same reader and writer loops serve `ws://` and
//! `wss://`, and a session can move with its socket to the owner shard
//! (`rustls::ServerConnection` is `Send`).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Loads the certificate and key into a server configuration, or `None`
/// when TLS is not configured.
pub fn server_config(cfg: &TlsConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) else {
        return Ok(None);
    };
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("tls.key_file {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("tls: certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert_file {}: no certificate", path.display());
    }
    Ok(certs)
}

/// One TLS session.
pub struct TlsSession {
    conn: rustls::ServerConnection,
}

impl TlsSession {
    /// A new server session.
    pub fn new(config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        rustls::ServerConnection::new(config).map(|conn| Self { conn }).map_err(io::Error::other)
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// True if there is ciphertext to send.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Feeds received ciphertext and appends the plaintext it yields to
    /// `plain`. Fails on a TLS protocol error (the alert to send is then in
    /// the output).
    pub fn receive(&mut self, mut ciphertext: &[u8], plain: &mut BytesMut) -> io::Result<()> {
        while !ciphertext.is_empty() {
            let n = self.conn.read_tls(&mut ciphertext)?;
            let state = self.conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.drain_plaintext(plain, state.plaintext_bytes_to_read())?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    fn drain_plaintext(&mut self, plain: &mut BytesMut, mut available: usize) -> io::Result<()> {
        while available > 0 {
            let start = plain.len();
            plain.resize(start + available, 0);
            match self.conn.reader().read(&mut plain[start..]) {
                Ok(n) => {
                    plain.truncate(start + n);
                    available -= n.min(available);
                    if n == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    plain.truncate(start);
                    break;
                }
                Err(e) => {
                    plain.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Encrypts `plaintext` for sending.
    pub fn send(&mut self, plaintext: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(plaintext)
    }

    /// Appends the ciphertext to send to `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(out)?;
        }
        Ok(())
    }

    /// Queues a close_notify alert.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost`, for tests only.
    pub(crate) const TEST_CERT: &str = include_str!("tls/testdata/localhost.crt.pem");
    pub(crate) const TEST_KEY: &str = include_str!("tls/testdata/localhost.key.pem");

    fn config() -> Arc<rustls::ServerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, TEST_CERT).unwrap();
        std::fs::write(&key, TEST_KEY).unwrap();
        server_config(&TlsConfig { cert_file: Some(cert), key_file: Some(key) }).unwrap().unwrap()
    }

    #[test]
    fn handshake_and_echo_with_a_real_client() {
        let server_cfg = config();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(TEST_CERT.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name).unwrap();
        let mut server = TlsSession::new(server_cfg).unwrap();
        let mut plain = BytesMut::new();
        client.writer().write_all(b"GET /connect HTTP/1.1\r\n\r\n").unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.receive(&wire, &mut plain).unwrap();
            let mut back = Vec::new();
            server.take_output(&mut back).unwrap();
            let mut r = &back[..];
            while !r.is_empty() {
                client.read_tls(&mut r).unwrap();
            }
            client.process_new_packets().unwrap();
        }
        assert!(!server.is_handshaking());
        assert_eq!(&plain[..], b"GET /connect HTTP/1.1\r\n\r\n");
        server.send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap();
        let mut back = Vec::new();
        server.take_output(&mut back).unwrap();
        let mut r = &back[..];
        while !r.is_empty() {
            client.read_tls(&mut r).unwrap();
        }
        client.process_new_packets().unwrap();
        let mut got = vec![0; 64];
        let n = client.reader().read(&mut got).unwrap();
        assert_eq!(&got[..n], b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
    }

    #[test]
    fn garbage_is_a_tls_error() {
        let mut server = TlsSession::new(config()).unwrap();
        let mut plain = BytesMut::new();
        assert!(server.receive(b"GET / HTTP/1.1\r\n\r\n", &mut plain).is_err());
        assert!(plain.is_empty());
    }
}
