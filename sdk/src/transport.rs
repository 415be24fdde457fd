//! Connecting to the master: `http://HOST:PORT`, `https://HOST:PORT` (TLS,
//! optionally with a client certificate for mTLS), or `unix:///PATH` (the
//! private socket a master gives its own children).

use crate::Error;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// PEM material for TLS to the master.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA certificate(s) that signed the master's certificate; none: the
    /// system's roots are not used, so give one for a private CA.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, for mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How long a TCP connect to a master may take; with several masters, one
/// that does not answer is passed over sooner ([`connect_within`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn configure(endpoint: Endpoint, timeout: Duration) -> Endpoint {
    endpoint
        .tcp_nodelay(true)
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
}

/// An error with its causes, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Opens a channel to `master`.
pub async fn connect(master: &str, tls: &TlsFiles) -> Result<Channel, Error> {
    connect_within(master, tls, CONNECT_TIMEOUT).await
}

/// [`connect`] with a connect timeout of `timeout`.
pub async fn connect_within(
    master: &str,
    tls: &TlsFiles,
    timeout: Duration,
) -> Result<Channel, Error> {
    let connect_err = |e: &dyn std::error::Error| Error::Connect {
        addr: master.to_string(),
        message: chain(e),
    };
    if let Some(path) = master.strip_prefix("unix://") {
        let path = std::path::PathBuf::from(path);
        // The URI is not used for a Unix socket; the connector decides.
        let endpoint = configure(Endpoint::from_static("http://localhost"), timeout);
        return endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| connect_err(&e));
    }
    let mut endpoint = Endpoint::from_shared(master.to_string())
        .map_err(|e| Error::Config(format!("COHORT_MASTER {master}: {e}")))?;
    if master.starts_with("https://") {
        // A handshake the master never finishes (stopped, hung) fails.
        let mut config = ClientTlsConfig::new().timeout(Duration::from_secs(10));
        if let Some(ca) = &tls.ca {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| Error::Config(format!("TLS settings for {master}: {}", chain(&e))))?;
    }
    configure(endpoint, timeout)
        .connect()
        .await
        .map_err(|e| connect_err(&e))
}
