//! Static assets, embedded in the binary: no CDN and no build step. The
//! vendored htmx files carry their exact version in their names, so they
//! can be cached for good.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// htmx, pinned (see assets/README.md).
pub const HTMX: &str = "/assets/htmx-2.0.11.min.js";
/// The htmx SSE extension, pinned.
pub const HTMX_SSE: &str = "/assets/htmx-ext-sse-2.2.4.min.js";
/// The UI's stylesheet.
pub const CSS: &str = "/assets/ui.css";
/// The UI's few lines of script (printing).
pub const JS: &str = "/assets/ui.js";

const FILES: &[(&str, &str, &str)] = &[
    ("htmx-2.0.11.min.js", "text/javascript", include_str!("../assets/htmx-2.0.11.min.js")),
    ("htmx-ext-sse-2.2.4.min.js", "text/javascript", include_str!("../assets/htmx-ext-sse-2.2.4.min.js")),
    ("ui.css", "text/css", include_str!("../assets/ui.css")),
    ("ui.js", "text/javascript", include_str!("../assets/ui.js")),
];

pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((n, ty, body)) => {
            // Versioned vendor files never change under their name; ours may.
            let cache = if n.starts_with("htmx") { "public, max-age=31536000, immutable" } else { "no-cache" };
            ([(header::CONTENT_TYPE, *ty), (header::CACHE_CONTROL, cache)], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
