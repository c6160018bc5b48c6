//! Sign-in with a staff PIN, and sign-out.

use crate::layout::required;
use crate::session::{clear_cookie, cookie, token_from};
use crate::{UiError, UiState};
use axum::Form;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use tillsync_core::schema::tables;

#[derive(Deserialize)]
pub struct SignIn {
    staff: Option<String>,
    pin: Option<String>,
}

fn form(
    error: Option<String>,
) -> impl FnOnce(&mut tillsync_store::Store, &crate::layout::Ctx) -> Result<maud::Markup, UiError> {
    move |store, _| {
        let mut staff: Vec<(String, String)> = store
            .records_of(tables::STAFF)?
            .into_iter()
            .filter(|(_, d)| d["active"].as_bool() != Some(false))
            .map(|(_, d)| (d["name"].as_str().unwrap_or("").to_string(), d["role"].as_str().unwrap_or("").to_string()))
            .collect();
        staff.sort();
        Ok(html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p class="flash err" role="alert" { (e) } }
            form method="post" action="/signin" class="card narrow" {
                label for="staff" { "Staff" }
                select id="staff" name="staff" required {
                    @for (name, role) in &staff {
                        option value=(name) { (name) " (" (role) ")" }
                    }
                }
                label for="pin" { "PIN" }
                input id="pin" name="pin" type="password" inputmode="numeric" autocomplete="off" required;
                button type="submit" class="primary" { "Sign in" }
            }
            @if staff.is_empty() {
                p { "No staff yet: add some with " code { "till staff add --data DIR NAME --role cashier --pin PIN" } "." }
            }
        })
    }
}

/// `GET /signin`.
pub async fn page(State(st): State<UiState>) -> Response {
    st.render(None, "", "Sign in", form(None)).await
}

/// `POST /signin`: checks the PIN, starts a session.
pub async fn submit(State(st): State<UiState>, Form(f): Form<SignIn>) -> Response {
    let wait = st.sessions.signin_wait_ms((st.now_ms)());
    if wait > 0 {
        let msg = format!("too many wrong PINs: wait {} s, then try again", wait.div_ceil(1_000));
        let mut r = st.render(None, "", "Sign in", form(Some(msg))).await;
        *r.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
        return r;
    }
    let checked = st
        .with_store(move |store| {
            let who = required(&f.staff, "the staff member")?.to_string();
            let pin = required(&f.pin, "the PIN")?.to_string();
            let wrong = || UiError::Invalid("wrong staff member or PIN: check and try again".into());
            let id = store.find_staff(&who).map_err(|_| wrong())?;
            let (live, data) = store.record_state(tables::STAFF, id)?.unwrap_or((false, serde_json::Value::Null));
            let hash = data["pin_hash"].as_str().unwrap_or("");
            if !live || data["active"].as_bool() == Some(false) || !tillsync_core::pin::verify_pin(&pin, hash) {
                return Err(wrong());
            }
            Ok((id, data["name"].as_str().unwrap_or(&who).to_string(), data["role"].as_str() == Some("manager")))
        })
        .await;
    st.sessions.signin_result((st.now_ms)(), checked.is_ok());
    match checked {
        Ok((id, name, manager)) => {
            let token = st.sessions.create((st.now_ms)(), id, &name, manager);
            ([(header::SET_COOKIE, cookie(&token))], Redirect::to("/sell")).into_response()
        }
        Err(e) => {
            let mut r = st.render(None, "", "Sign in", form(Some(e.to_string()))).await;
            *r.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            r
        }
    }
}

/// `POST /signout`.
pub async fn signout(State(st): State<UiState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(t) = token_from(&headers) {
        st.sessions.remove(&t);
    }
    ([(header::SET_COOKIE, clear_cookie())], Redirect::to("/signin")).into_response()
}
