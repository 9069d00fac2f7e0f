//! TLS setup shared by every HTTPS client (bundle downloads, health checks): rustls with the
//! ring provider only (crate notes #7: reqwest panics at the first request without it).

/// Installs ring as the process-wide rustls provider; safe to call many times.
pub fn ensure_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
