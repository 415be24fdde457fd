//! The bearer token on every call a client makes, as one tonic interceptor:
//! the SDK's Join, `cohortctl`'s Control and Health calls, and the tests'.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key the master reads the token from.
pub const HEADER: &str = "authorization";

/// Adds `authorization: Bearer TOKEN` to each request, or nothing without a
/// token.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The interceptor for `token`; an error when the token holds what a
    /// header cannot carry.
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token has characters a header cannot carry".to_string())
            })
            .transpose()
            .map(Bearer)
    }

    /// Puts the token on one request.
    pub fn apply<T>(&self, request: &mut Request<T>) {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(HEADER, v.clone());
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.apply(&mut request);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_rides_every_request_and_nothing_without_one() {
        let mut with = Bearer::new(Some("s3cret-token")).expect("valid");
        let r = with.call(Request::new(())).expect("passes");
        assert_eq!(
            r.metadata().get(HEADER).and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret-token")
        );
        let mut without = Bearer::new(None).expect("valid");
        let r = without.call(Request::new(())).expect("passes");
        assert!(r.metadata().get(HEADER).is_none());
        assert!(Bearer::new(Some("line\nbreak")).is_err());
    }
}
