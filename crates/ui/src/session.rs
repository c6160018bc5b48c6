//! Staff sessions: a random cookie mapped, in memory, to the signed-in staff
//! member and the cart being rung up. Sessions are bounded in number and
//! end after an idle time; a restart of the node signs everyone out.

use crate::UiState;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tillsync_session";
/// Most sessions held at once; the least recently used goes first.
pub const SESSIONS_LEN_MAX: usize = 64;
/// A session unused for this long is signed out, in milliseconds.
pub const SESSION_IDLE_MS: u64 = 30 * 60 * 1_000;
/// Most lines in one cart.
pub const CART_LINES_MAX: usize = 200;
/// Wrong PINs in a row before sign-in pauses.
pub const SIGNIN_FAILURES_MAX: u32 = 5;
/// How long sign-in pauses after too many wrong PINs, in milliseconds.
pub const SIGNIN_PAUSE_MS: u64 = 30_000;
/// A discount above this (in basis points: 20 %) needs a manager's PIN.
pub const LARGE_DISCOUNT_BP: i64 = 2_000;

/// A line of the cart. The price shown and charged comes from the catalogue
/// at checkout unless overridden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CartLine {
    pub sku: String,
    pub qty: i64,
    /// A discount on this line, in basis points.
    pub discount_bp: i64,
    /// A price replacing the catalogue's, in minor units.
    pub price_minor: Option<i64>,
}

/// The sale being rung up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cart {
    pub lines: Vec<CartLine>,
    /// A discount on the whole cart, in basis points.
    pub discount_bp: i64,
    pub customer: Option<Uuid>,
}

impl Cart {
    /// Adds `qty` of a SKU (to its line if it has one).
    pub fn add(&mut self, sku: &str, qty: i64) -> Result<(), String> {
        if let Some(l) = self.lines.iter_mut().find(|l| l.sku == sku) {
            l.qty = (l.qty + qty).min(tillsync_core::domain::LINE_QTY_MAX);
            return Ok(());
        }
        if self.lines.len() >= CART_LINES_MAX {
            return Err(format!("a cart holds at most {CART_LINES_MAX} lines: check out first"));
        }
        self.lines.push(CartLine { sku: sku.to_string(), qty, discount_bp: 0, price_minor: None });
        Ok(())
    }

    /// Whether a manager must approve this cart: a price override or a
    /// discount over [`LARGE_DISCOUNT_BP`].
    pub fn needs_approval(&self) -> bool {
        self.discount_bp > LARGE_DISCOUNT_BP
            || self.lines.iter().any(|l| l.discount_bp > LARGE_DISCOUNT_BP || l.price_minor.is_some())
    }
}

/// A message shown once on the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flash {
    Ok(String),
    Err(String),
}

/// A signed-in session.
#[derive(Clone, Debug)]
pub struct Session {
    pub staff_id: Uuid,
    pub name: String,
    pub manager: bool,
    pub cart: Cart,
    pub flash: Vec<Flash>,
    /// The hub admin token typed on the Devices page, kept for this session only.
    pub admin_token: Option<String>,
    last_ms: u64,
}

/// The sessions of one UI.
#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    len_max: usize,
    idle_ms: u64,
    /// Wrong PINs in a row, and until when sign-in is paused: a PIN has
    /// only 4 to 8 digits, so guessing must be slow.
    failures: Mutex<(u32, u64)>,
}

/// Sessions are kept under the SHA-256 of their cookie: looking a session
/// up compares hashes, never the secret itself, so the map's key
/// comparisons reveal nothing about a cookie through their timing.
fn key(token: &str) -> String {
    use sha2::{Digest, Sha256};
    tillsync_core::change::hex(&Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS provides randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    /// At most `len_max` sessions, each ending after `idle_ms` unused.
    pub fn new(len_max: usize, idle_ms: u64) -> Self {
        Sessions { inner: Mutex::new(HashMap::new()), len_max: len_max.max(1), idle_ms, failures: Mutex::new((0, 0)) }
    }

    /// Milliseconds left before sign-in may be tried again (0: now).
    pub fn signin_wait_ms(&self, now_ms: u64) -> u64 {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.1.saturating_sub(now_ms)
    }

    /// Records a sign-in attempt; too many wrong PINs in a row pause sign-in.
    pub fn signin_result(&self, now_ms: u64, ok: bool) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            *f = (0, 0);
        } else {
            f.0 += 1;
            if f.0 >= SIGNIN_FAILURES_MAX {
                f.1 = now_ms + SIGNIN_PAUSE_MS;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; returns its token.
    pub fn create(&self, now_ms: u64, staff_id: Uuid, name: &str, manager: bool) -> String {
        let mut m = self.lock();
        m.retain(|_, s| now_ms.saturating_sub(s.last_ms) < self.idle_ms);
        while m.len() >= self.len_max {
            let oldest = m.iter().min_by_key(|(_, s)| s.last_ms).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        let token = new_token();
        m.insert(
            key(&token),
            Session {
                staff_id,
                name: name.to_string(),
                manager,
                cart: Cart::default(),
                flash: vec![],
                admin_token: None,
                last_ms: now_ms,
            },
        );
        token
    }

    /// Runs `f` on a live session (and marks it used); `None` when the
    /// token is unknown or the session has expired.
    pub fn with<T>(&self, token: &str, now_ms: u64, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        let mut m = self.lock();
        let k = key(token);
        let s = m.get_mut(&k)?;
        if now_ms.saturating_sub(s.last_ms) >= self.idle_ms {
            m.remove(&k);
            return None;
        }
        s.last_ms = now_ms;
        Some(f(s))
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        self.lock().remove(&key(token));
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session token from a request's cookies.
pub fn token_from(headers: &axum::http::HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == SESSION_COOKIE && !v.is_empty()).then(|| v.to_string())
        })
    })
}

/// The cookie that carries a session.
pub fn cookie(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
}

/// The cookie that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The signed-in staff member of a request. Pages that need one redirect
/// to the sign-in page without it.
#[derive(Clone, Debug)]
pub struct Auth {
    pub token: String,
    pub staff_id: Uuid,
    pub name: String,
    pub manager: bool,
}

impl FromRequestParts<UiState> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &UiState) -> Result<Self, Self::Rejection> {
        let now = (st.now_ms)();
        token_from(&parts.headers)
            .and_then(|t| {
                st.sessions.with(&t, now, |s| Auth {
                    token: t.clone(),
                    staff_id: s.staff_id,
                    name: s.name.clone(),
                    manager: s.manager,
                })
            })
            .ok_or_else(|| Redirect::to("/signin").into_response())
    }
}

impl UiState {
    /// Runs `f` on the caller's session.
    pub(crate) fn session<T: Default>(&self, auth: &Auth, f: impl FnOnce(&mut Session) -> T) -> T {
        self.sessions.with(&auth.token, (self.now_ms)(), f).unwrap_or_default()
    }

    /// Queues a message for the caller's next page.
    pub(crate) fn flash(&self, auth: &Auth, f: Flash) {
        self.session(auth, |s| s.flash.push(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::new(2, 1_000);
        let a = s.create(0, Uuid::nil(), "a", false);
        assert!(s.with(&a, 500, |_| ()).is_some());
        assert!(s.with(&a, 1_600, |_| ()).is_none(), "idle past the limit");
        let b = s.create(2_000, Uuid::nil(), "b", false);
        let c = s.create(2_001, Uuid::nil(), "c", false);
        let d = s.create(2_002, Uuid::nil(), "d", false);
        assert_eq!(s.len(), 2);
        assert!(s.with(&b, 2_003, |_| ()).is_none(), "least recently used goes first");
        assert!(s.with(&c, 2_003, |_| ()).is_some() && s.with(&d, 2_003, |_| ()).is_some());
        assert_ne!(c, d);
        assert_eq!(c.len(), 64);
    }

    #[test]
    fn wrong_pins_pause_sign_in() {
        let s = Sessions::new(2, 1_000);
        for _ in 0..SIGNIN_FAILURES_MAX - 1 {
            s.signin_result(10, false);
        }
        assert_eq!(s.signin_wait_ms(10), 0);
        s.signin_result(10, false);
        assert_eq!(s.signin_wait_ms(10), SIGNIN_PAUSE_MS);
        assert_eq!(s.signin_wait_ms(10 + SIGNIN_PAUSE_MS), 0);
        s.signin_result(20, true);
        assert_eq!(s.signin_wait_ms(20), 0);
    }

    #[test]
    fn approval_needed_for_overrides_and_large_discounts() {
        let mut c = Cart::default();
        c.add("A", 1).unwrap();
        assert!(!c.needs_approval());
        c.discount_bp = LARGE_DISCOUNT_BP;
        assert!(!c.needs_approval());
        c.discount_bp = LARGE_DISCOUNT_BP + 1;
        assert!(c.needs_approval());
        c.discount_bp = 0;
        c.lines[0].price_minor = Some(1);
        assert!(c.needs_approval());
    }
}
