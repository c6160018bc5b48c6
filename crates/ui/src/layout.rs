//! The page shell (header with the sync indicator, nav bar, messages) and
//! the helpers every page uses: money, times, redirects with a message.

use crate::session::{Auth, Flash};
use crate::{UiError, UiState, assets, indicator};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use tillsync_core::money::Currency;
use tillsync_store::Store;

/// The pages in the nav bar: (name, path).
pub const NAV: &[(&str, &str)] = &[
    ("Sell", "/sell"),
    ("Sales", "/sales"),
    ("Stock", "/stock"),
    ("Customers", "/customers"),
    ("Conflicts", "/conflicts"),
    ("Quarantine", "/quarantine"),
    ("Backups", "/backups"),
    ("Devices", "/devices"),
    ("Settings", "/settings"),
    ("Report", "/report"),
];

/// What a page body may need besides the store.
pub struct Ctx {
    pub auth: Option<Auth>,
    pub currency: Currency,
    pub tz: jiff::tz::TimeZone,
    pub till_name: String,
}

impl Ctx {
    /// Money in the store's currency, as on receipts ("EUR 4.50").
    pub fn money(&self, minor: i64) -> String {
        self.currency.display(minor)
    }

    /// A Unix time in the store's time zone.
    pub fn time(&self, ms: i64) -> String {
        match jiff::Timestamp::from_millisecond(ms) {
            Ok(t) => t.to_zoned(self.tz.clone()).strftime("%Y-%m-%d %H:%M").to_string(),
            Err(_) => "?".into(),
        }
    }

    /// Whether the signed-in staff member is a manager.
    pub fn manager(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.manager)
    }
}

fn shell(ctx: &Ctx, active: &str, title: &str, ind: &(String, String), flash: &[Flash], body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // htmx must not add inline styles or evaluate code: the CSP forbids both.
                // Style attributes are not settled either (an inline style is refused anyway).
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"attributesToSettle":["class","width","height"]}"#;
                title { (title) " - Tillsync" }
                // No favicon request: an empty data URL.
                link rel="icon" href="data:,";
                link rel="stylesheet" href=(assets::CSS);
                script src=(assets::HTMX) defer {}
                script src=(assets::HTMX_SSE) defer {}
                script src=(assets::JS) defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    span class="brand" { "Tillsync " span class="till" { (ctx.till_name) } }
                    (indicator::indicator(ind))
                    @if let Some(a) = &ctx.auth {
                        div class="who" {
                            span { (a.name) @if a.manager { " (manager)" } }
                            form method="post" action="/signout" {
                                button type="submit" class="secondary" { "Sign out" }
                            }
                        }
                    }
                }
                @if ctx.auth.is_some() {
                    nav aria-label="Main" {
                        ul {
                            @for (name, path) in NAV {
                                li {
                                    @if *name == active {
                                        a href=(path) aria-current="page" { (name) }
                                    } @else {
                                        a href=(path) { (name) }
                                    }
                                }
                            }
                        }
                    }
                }
                main id="main" {
                    @for f in flash {
                        @match f {
                            Flash::Ok(m) => p class="flash ok" role="status" { (m) },
                            Flash::Err(m) => p class="flash err" role="alert" { (m) },
                        }
                    }
                    (body)
                }
            }
        }
    }
}

/// Whether a request came from htmx (it then gets a fragment, not a page).
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.get("hx-request").is_some_and(|v| v.as_bytes() == b"true")
}

impl UiState {
    /// Renders a full page: the body from `f` (run on the store), inside the
    /// shell with the indicator and the caller's pending messages. An error
    /// from `f` is shown in place of the body.
    pub(crate) async fn render(
        &self,
        auth: Option<Auth>,
        active: &'static str,
        title: impl Into<String>,
        f: impl FnOnce(&mut Store, &Ctx) -> Result<Markup, UiError> + Send + 'static,
    ) -> Response {
        let title = title.into();
        let flash = match &auth {
            Some(a) => self.session(a, |s| std::mem::take(&mut s.flash)),
            None => vec![],
        };
        let config = self.config.clone();
        let r = self
            .with_store(move |store| {
                let settings = store.settings()?;
                let ctx = Ctx {
                    auth,
                    currency: settings.currency,
                    tz: jiff::tz::TimeZone::get(&settings.time_zone).unwrap_or(jiff::tz::TimeZone::UTC),
                    till_name: store.identity().name.clone(),
                };
                let ind = indicator::render_now(store, &config);
                let (status, body) = match f(store, &ctx) {
                    Ok(b) => (StatusCode::OK, b),
                    Err(e) => {
                        (e.status(), html! { h1 { (title) } p class="flash err" role="alert" { (e.public_message()) } })
                    }
                };
                Ok((status, shell(&ctx, active, &title, &ind, &flash, body)))
            })
            .await;
        match r {
            Ok((status, page)) => (status, Html(page.into_string())).into_response(),
            Err(e) => {
                let page = html! { (maud::DOCTYPE) title { "Error" } p { (e.public_message()) } };
                (e.status(), Html(page.into_string())).into_response()
            }
        }
    }

    /// After a form post: a message for the next page, then a redirect
    /// (303) so that reloading does not post again.
    pub(crate) fn done(&self, auth: &Auth, to: &str, r: Result<String, UiError>) -> Response {
        match r {
            Ok(m) if !m.is_empty() => self.flash(auth, Flash::Ok(m)),
            Ok(_) => {}
            Err(e) => self.flash(auth, Flash::Err(e.public_message())),
        }
        Redirect::to(to).into_response()
    }
}

/// A required, trimmed form field.
pub fn required<'a>(v: &'a Option<String>, what: &str) -> Result<&'a str, UiError> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(UiError::Invalid(format!("{what} is missing: fill it in and try again"))),
    }
}

/// An optional, trimmed form field (empty is none).
pub fn optional(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Parses a percentage field ("20", "12.5") into basis points; empty is 0.
pub fn percent(v: &Option<String>) -> Result<i64, UiError> {
    match optional(v) {
        None => Ok(0),
        Some(s) => tillsync_core::money::parse_rate_bp(s)
            .map_err(|_| UiError::Invalid(format!("'{s}' is not a percentage: use a number from 0 to 100"))),
    }
}

/// A whole number field.
pub fn whole(v: &Option<String>, what: &str) -> Result<i64, UiError> {
    let s = required(v, what)?;
    s.parse::<i64>().map_err(|_| UiError::Invalid(format!("'{s}' is not a whole number for {what}")))
}
