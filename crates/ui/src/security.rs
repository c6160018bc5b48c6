//! Security layers of the UI: response headers that keep pages from being
//! framed, sniffed or scripted from elsewhere, and a refusal of cross-site
//! form posts (besides the session cookie being `SameSite=Strict`).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Largest form body accepted, in bytes.
pub const FORM_BODY_LEN_MAX: usize = 16 * 1024;

/// The content security policy: everything from this origin only, no
/// inline script or style (the UI's script and CSS are files).
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the security headers to every UI response.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// Whether an `Origin` header names the host the request was sent to.
pub fn same_origin(origin: &str, host: &str) -> bool {
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host))
}

/// Refuses a state-changing request whose `Origin` is present and is not
/// the UI's own host: another web page cannot post to the till.
pub async fn verify_origin(req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let cross_site = req.headers().get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
        let bad_origin =
            req.headers().get(header::ORIGIN).is_some_and(|o| !o.to_str().is_ok_and(|o| same_origin(o, host)));
        if cross_site || bad_origin {
            return (StatusCode::FORBIDDEN, "cross-site request refused: use the till's own pages").into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(same_origin("http://127.0.0.1:8441", "127.0.0.1:8441"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8441"));
        assert!(!same_origin("null", "127.0.0.1:8441"));
        assert!(!same_origin("http://127.0.0.1:8441", ""));
    }
}
