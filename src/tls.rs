//! TLS setup shared by every HTTPS client (bundle downloads, health checks): rustls with the
//! ring provider only (crate notes #7: reqwest panics at the first request without it).

/// Installs ring as the process-wide rustls provider; safe to call many times.
pub fn ensure_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Accepts any server certificate and keeps the leaf: for reading what an endpoint serves
/// (`certs check-expiration`, `renew-certs`' final check), never for sending data.
#[derive(Debug)]
struct KeepLeaf {
    leaf: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    schemes: Vec<rustls::SignatureScheme>,
}

impl rustls::client::danger::ServerCertVerifier for KeepLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap() = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

/// The DER leaf certificate `address:port` serves. Reads the handshake only: endpoints that
/// demand a client certificate (etcd) have sent theirs before they ask for ours, so a handshake
/// that then fails still yields it.
pub async fn served_certificate(
    address: &str,
    port: u16,
    timeout: std::time::Duration,
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    ensure_provider();
    let what = format!("{address}:{port}");
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((address, port)))
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no TCP answer within {} s", timeout.as_secs()))?
        .with_context(|| format!("{what}: cannot connect"))?;
    let leaf = std::sync::Arc::new(std::sync::Mutex::new(None));
    let provider = rustls::crypto::ring::default_provider();
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(KeepLeaf {
            leaf: leaf.clone(),
            schemes,
        }))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(address.to_string())
        .with_context(|| format!("{what}: not a valid TLS server name"))?;
    let handshake =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp);
    let r = tokio::time::timeout(timeout, handshake).await;
    if let Some(der) = leaf.lock().unwrap().take() {
        return Ok(der);
    }
    match r {
        Err(_) => anyhow::bail!("{what}: no TLS handshake within {} s", timeout.as_secs()),
        Ok(Err(e)) => Err(anyhow::anyhow!("{what}: TLS handshake: {e}")),
        Ok(Ok(_)) => anyhow::bail!("{what}: the endpoint presented no certificate"),
    }
}
