//! The pages and their form actions. Handlers stay thin: they parse the
//! form, call the store (or the node) and render or redirect.

pub mod admin;
pub mod records;
pub mod sales;
pub mod sell;
pub mod signin;
pub mod sync;

use crate::UiState;
use crate::session::token_from;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

/// `/`: the Sell page when signed in, else the sign-in page.
pub async fn home(State(st): State<UiState>, headers: HeaderMap) -> Response {
    let signed_in = token_from(&headers).is_some_and(|t| st.sessions.with(&t, (st.now_ms)(), |_| ()).is_some());
    Redirect::to(if signed_in { "/sell" } else { "/signin" }).into_response()
}
