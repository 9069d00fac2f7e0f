//! Health checks made from the operator's machine over TLS with a client certificate, so they
//! need no tool on the hosts and test what clients really see (certificates included).

use std::time::Duration;

use anyhow::Context as _;

/// A client for the cluster's endpoints: trusts only the cluster CA (bundle), presents `cert`/`key`.
pub fn client(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    crate::tls::ensure_provider();
    let mut identity = cert_pem.to_vec();
    identity.push(b'\n');
    identity.extend_from_slice(key_pem);
    reqwest::Client::builder()
        // A bundle during a CA rotation (old and new CA): trust each.
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(ca_pem).context("the cluster CA certificate")?,
        )
        .identity(reqwest::Identity::from_pem(&identity).context("the client certificate and key")?)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(3))
        .tls_info(true)
        .build()
        .context("building the HTTPS client")
}

/// GETs `url`; Ok(body) for a 2xx answer, else an error with the status and body.
pub async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    Ok(send(client.get(url), url).await?.body)
}

/// An answer and the certificate the endpoint served with it.
pub struct Served {
    pub body: String,
    /// When the served leaf certificate expires, if one was seen and parsed.
    pub not_after: Option<time::OffsetDateTime>,
}

/// Sends `req`; Ok for a 2xx answer (with the served certificate's expiry), else an error
/// with the URL, status and body.
pub async fn send(req: reqwest::RequestBuilder, url: &str) -> anyhow::Result<Served> {
    let r = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {}", error_chain(&e)))?;
    let not_after = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, c)| c.validity().not_after.to_datetime());
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{url}: HTTP {status}: {}", body.trim());
    }
    Ok(Served { body, not_after })
}

/// Polls `url` until it answers 2xx or `within` passes; the last error explains a failure.
pub async fn wait_ok(
    client: &reqwest::Client,
    url: &str,
    within: Duration,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match get(client, url).await {
            Ok(b) => {
                tracing::debug!(url, "gate poll: ready");
                return Ok(b);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("not ready after {} s", within.as_secs())));
            }
            Err(e) => {
                tracing::debug!(url, error = %format!("{e:#}"), "gate poll: not ready yet");
                tokio::time::sleep(Duration::from_millis(500)).await
            }
        }
    }
}

/// An error and its sources on one line (reqwest hides the useful part in the sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
