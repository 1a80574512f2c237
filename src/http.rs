//! Where gymforge's HTTP clients come from. reqwest is built without a TLS provider of its own
//! (its default, aws-lc-rs, compiles a C library for a minute; see Cargo.toml), so every client
//! is built with [`client_builder`], which first makes rustls's ring provider the process's
//! default. Code that builds clients elsewhere (the OTLP exporters) calls [`install_tls`] first.

/// Makes ring the process's TLS provider; later calls do nothing.
pub fn install_tls() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Fails only when a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client builder whose clients can speak TLS.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_tls();
    reqwest::Client::builder()
}

#[cfg(test)]
mod tests {
    #[test]
    fn clients_build_with_tls() {
        super::client_builder().https_only(true).build().expect("a TLS-capable client");
    }
}
