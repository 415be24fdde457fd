//! Bearer-token authentication for `Membership` and `Control`, as a tonic
//! interceptor. Tokens are compared as SHA-256 digests in constant time, so
//! neither the content nor the length of a token leaks through timing. Up
//! to two tokens are accepted at once, for rotation. Health and reflection
//! stay open (probes and `grpcurl list` need no token).
//!
//! Over mTLS the same interceptor requires a client certificate. The TLS
//! handshake itself lets a client without one through, so that it gets
//! this answer in words (and health and reflection) instead of a closed
//! connection, which grpcurl retries until its deadline.

use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use tonic::{Request, Status};

/// A token that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token read from a file or the environment.
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }

    /// The token itself, for handing to local children.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Parses a token file: one token per non-empty line, at most two
/// (current and next, for rotation), each at least 16 characters.
pub fn parse_token_file(text: &str) -> Result<Vec<Token>, String> {
    let tokens: Vec<Token> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(Token::new)
        .collect();
    match tokens.len() {
        0 => Err(
            "the token file is empty: put one token (or two, while rotating) in it, one per line"
                .into(),
        ),
        1 | 2 => {
            if tokens.iter().any(|t| t.0.len() < 16) {
                return Err(
                    "tokens must be at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
                );
            }
            Ok(tokens)
        }
        n => Err(format!(
            "the token file holds {n} tokens; at most two are active at once (rotation)"
        )),
    }
}

/// The interceptor: open when no token is configured and no client
/// certificate required.
#[derive(Clone, Default)]
pub struct Auth {
    digests: Arc<Vec<[u8; 32]>>,
    client_certificate: bool,
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

impl Auth {
    /// Accepts any of `tokens`; none means no authentication.
    pub fn new(tokens: &[Token]) -> Auth {
        Auth {
            digests: Arc::new(tokens.iter().map(|t| digest(t.0.as_bytes())).collect()),
            client_certificate: false,
        }
    }

    /// Also requires a verified client certificate (mTLS on this socket).
    pub fn requiring_client_certificate(mut self, required: bool) -> Auth {
        self.client_certificate = required;
        self
    }

    /// Whether a token is required.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    fn accepts(&self, given: &[u8]) -> bool {
        let d = digest(given);
        // Check every configured token, always, without early exit.
        self.digests
            .iter()
            .fold(false, |ok, want| ok | same(want, &d))
    }
}

/// Whether two secrets are equal, in time independent of where they differ
/// (a length difference shows; the secrets compared have fixed lengths).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.client_certificate && !has_certificate(&request) {
            return Err(Status::unauthenticated(
                "this master requires a client certificate (mTLS): give grpcurl -cert and -key, \
                 or set COHORT_TLS_CERT and COHORT_TLS_KEY",
            ));
        }
        if !self.enabled() {
            return Ok(request);
        }
        let given = request
            .metadata()
            .get(cohort_proto::auth::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if self.accepts(given.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or invalid bearer token: send `authorization: Bearer <token>`",
            ))
        }
    }
}

/// Whether the client presented a certificate that the TLS layer verified.
fn has_certificate<T>(request: &Request<T>) -> bool {
    request.peer_certs().is_some_and(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn with(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut()
                .insert("authorization", h.parse().expect("header"));
        }
        r
    }

    #[test]
    fn accepts_either_rotation_token_and_nothing_else() {
        let tokens =
            parse_token_file("old-token-0123456789\n\nnew-token-0123456789\n").expect("two");
        let mut auth = Auth::new(&tokens);
        for ok in ["Bearer old-token-0123456789", "Bearer new-token-0123456789"] {
            assert!(auth.call(with(Some(ok))).is_ok(), "{ok}");
        }
        for bad in [
            None,
            Some("Bearer "),
            Some("Bearer old-token-012345678"),
            Some("old-token-0123456789"),
            Some("Bearer x"),
        ] {
            let err = auth.call(with(bad)).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(
                !err.message().contains("token-0123"),
                "no token in messages"
            );
        }
        assert!(
            Auth::default().call(with(None)).is_ok(),
            "open without tokens"
        );
    }

    #[test]
    fn over_mtls_a_request_without_a_client_certificate_is_refused_in_words() {
        let mut auth = Auth::default().requiring_client_certificate(true);
        let err = auth.call(with(None)).expect_err("no certificate");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("COHORT_TLS_CERT"), "{err:?}");
    }

    #[test]
    fn token_files_are_checked() {
        assert!(parse_token_file("\n \n").is_err());
        assert!(parse_token_file("short").expect_err("short").contains("16"));
        assert!(parse_token_file("aaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbb\ncccccccccccccccc").is_err());
        assert_eq!(
            format!("{:?}", Token::new("secret-value")),
            "Token(<redacted>)"
        );
    }
}
