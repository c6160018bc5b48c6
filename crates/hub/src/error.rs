//! The hub's error type: a stable code, a status, and a message that never
//! carries internal detail.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tillsync_core::wire::ErrorBody;

/// Errors of the hub, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("missing or unknown token: send `Authorization: Bearer TOKEN`")]
    Unauthorized,
    #[error("this device was revoked: enrol it again with a new code")]
    Revoked,
    #[error("this needs the tenant's admin token")]
    Forbidden,
    #[error(
        "this device's data folder was copied to another till: both copies are stopped; on each, save its changes with `till export-pending --all`, enrol again with a new code and `till import-pending`"
    )]
    Forked,
    #[error("{0} not found")]
    NotFound(String),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the enrolment code is unknown, used or expired: ask for a new one with `till hub enrol`")]
    BadCode,
    #[error("{0}")]
    Quota(String),
    #[error("the request body is too large")]
    TooLarge,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("the hub is busy, try again")]
    Busy,
    /// Too many requests from one caller: retry after this many seconds.
    #[error("too many requests: retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The hub's database cannot be reached (detail logged, never sent).
    #[error("the hub's database is unavailable, try again shortly")]
    Unavailable(String),
    /// Internal detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl HubError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::Unauthorized => "unauthorized",
            HubError::Revoked => "revoked",
            HubError::Forbidden => "forbidden",
            HubError::Forked => "forked",
            HubError::NotFound(_) => "not_found",
            HubError::BadRequest { code, .. } => code,
            HubError::BadCode => "bad_code",
            HubError::Quota(_) => "quota_exceeded",
            HubError::TooLarge => "too_large",
            HubError::MethodNotAllowed => "method_not_allowed",
            HubError::Busy => "busy",
            HubError::RateLimited { .. } => "rate_limited",
            HubError::Unavailable(_) => "unavailable",
            HubError::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            HubError::Unauthorized | HubError::Revoked | HubError::Forked => StatusCode::UNAUTHORIZED,
            HubError::Forbidden => StatusCode::FORBIDDEN,
            HubError::NotFound(_) => StatusCode::NOT_FOUND,
            HubError::BadRequest { .. } | HubError::BadCode => StatusCode::BAD_REQUEST,
            HubError::Quota(_) | HubError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            HubError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HubError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            HubError::Busy | HubError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HubError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A bad request with a code.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        HubError::BadRequest { code, message: message.into() }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { code: self.code().into(), message: self.to_string(), expected: None }
    }
}

impl From<rusqlite::Error> for HubError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => HubError::Busy,
            _ => HubError::Internal(e.to_string()),
        }
    }
}

impl From<tillsync_store::StoreError> for HubError {
    fn from(e: tillsync_store::StoreError) -> Self {
        match e {
            tillsync_store::StoreError::Locked => HubError::Busy,
            other => HubError::Internal(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for HubError {
    fn from(e: serde_json::Error) -> Self {
        HubError::Internal(e.to_string())
    }
}

impl From<postgres::Error> for HubError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        match e.code() {
            // Two transactions collided: the client retries, as for SQLite's busy.
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
                HubError::Busy
            }
            Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED => HubError::Busy,
            Some(_) => HubError::Internal(e.to_string()),
            // No SQL state: the connection failed or closed.
            None => HubError::Unavailable(e.to_string()),
        }
    }
}

impl From<r2d2::Error> for HubError {
    /// The pool gave no connection within its acquire timeout: the
    /// database is down or every connection is busy.
    fn from(e: r2d2::Error) -> Self {
        HubError::Unavailable(e.to_string())
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        match &self {
            HubError::Internal(detail) => tracing::error!(detail = detail.as_str(), "internal error"),
            HubError::Unavailable(detail) => tracing::error!(detail = detail.as_str(), "database unavailable"),
            _ => {}
        }
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let HubError::RateLimited { retry_after_s } = self {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after_s));
        }
        resp
    }
}
