//! Security layers of the UI: response headers that keep pages from being
//! framed, sniffed or scripted from elsewhere, and a refusal of cross-site
//! form posts (besides the session cookie being `SameSite=Strict`).

use crate::UiState;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

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

/// Whether a path is open without a session when the UI is reachable from
/// other machines: the sign-in page and the static assets it needs.
pub fn open_without_signin(path: &str) -> bool {
    path == "/signin" || path.starts_with("/assets/")
}

/// Refuses every request without a live staff session, except the sign-in
/// page and assets: pages redirect to `/signin`, the API answers 401.
async fn signed_in_only(State(st): State<UiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if open_without_signin(path) {
        return next.run(req).await;
    }
    let now = (st.now_ms)();
    let signed_in =
        crate::session::token_from(req.headers()).is_some_and(|t| st.sessions.with(&t, now, |_| ()).is_some());
    if signed_in {
        return next.run(req).await;
    }
    let api = path.starts_with("/api/") || path == "/metrics" || path.starts_with("/ui/");
    if api || !matches!(*req.method(), Method::GET | Method::HEAD) {
        let body = serde_json::json!({"code": "unauthorized", "message": "sign in on this till first"});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    Redirect::to("/signin").into_response()
}

/// The security layers for the till's whole listener (the UI merged with
/// the node's local API): the security headers on every response, and, when
/// the listener is reachable from other machines (`exposed`: not bound to
/// loopback), a staff session on every route but sign-in and assets, so the
/// status, metrics and "sync now" of the local API are not open to the
/// network either.
pub fn secure(router: Router, state: UiState, exposed: bool) -> Router {
    let router =
        if exposed { router.layer(axum::middleware::from_fn_with_state(state, signed_in_only)) } else { router };
    router.layer(axum::middleware::from_fn(security_headers))
}

/// Whether an `Origin` header names the host the request was sent to.
pub fn same_origin(origin: &str, host: &str) -> bool {
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host))
}

/// Whether a state-changing request may come from this page: its
/// `Sec-Fetch-Site`, when the browser sends one, must say same-origin, and
/// its `Origin`, when present, must be the UI's own host. With the
/// `no-referrer` policy browsers send `Origin: null` even on the UI's own
/// forms, so `null` passes only beside `Sec-Fetch-Site: same-origin`.
pub fn post_allowed(origin: Option<&str>, fetch_site: Option<&str>, host: &str) -> bool {
    let site_ok = match fetch_site {
        None => true,
        Some(s) => s == "same-origin" || s == "none",
    };
    let origin_ok = match origin {
        None => true,
        Some("null") => fetch_site == Some("same-origin"),
        Some(o) => same_origin(o, host),
    };
    site_ok && origin_ok
}

/// Refuses a state-changing request from another site (see [`post_allowed`]):
/// another web page cannot post to the till.
pub async fn verify_origin(req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        let h = |k: header::HeaderName| req.headers().get(k).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let host = h(header::HOST).unwrap_or("");
        if !post_allowed(h(header::ORIGIN), h(header::HeaderName::from_static("sec-fetch-site")), host) {
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
        let host = "127.0.0.1:8441";
        assert!(post_allowed(None, None, host), "curl");
        assert!(post_allowed(Some("http://127.0.0.1:8441"), Some("same-origin"), host));
        assert!(post_allowed(Some("null"), Some("same-origin"), host), "no-referrer form post");
        assert!(!post_allowed(Some("null"), None, host));
        assert!(!post_allowed(Some("null"), Some("cross-site"), host));
        assert!(!post_allowed(Some("http://evil.example"), None, host));
        assert!(!post_allowed(None, Some("cross-site"), host));
        assert!(!post_allowed(None, Some("same-site"), host));
    }
}
