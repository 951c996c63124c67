//! Basic (RFC 7617): the user and password, base64-encoded, in one leg.

use super::base64;
use crate::http_proxy::BasicAuth;

/// The `Proxy-Authorization` value for `credentials`.
pub(super) fn authorization(credentials: &BasicAuth) -> String {
    let pair = format!("{}:{}", credentials.user, credentials.password);
    format!("Basic {}", base64::encode(pair.as_bytes()))
}
