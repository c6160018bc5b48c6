//! The UI's one error type. Messages are lowercase and say what to do; they
//! are shown to the cashier as they are.

use axum::http::StatusCode;

/// Errors of the UI.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Store(#[from] tillsync_store::StoreError),
    #[error(transparent)]
    Config(#[from] tillsync_node::config::ConfigError),
    #[error(transparent)]
    Backup(#[from] tillsync_backup::BackupError),
    #[error(transparent)]
    Sync(#[from] tillsync_node::SyncError),
    #[error(transparent)]
    Money(#[from] tillsync_core::money::MoneyError),
    #[error(transparent)]
    Sale(#[from] tillsync_core::domain::SaleError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("internal error ({0}): try again, and restart `till node run` if it persists")]
    Internal(String),
}

impl UiError {
    /// What the page shows: the message, except for a server error, whose
    /// detail (SQL, file paths) is logged and replaced by a plain sentence,
    /// since the UI may be reached from the shop's network.
    pub fn public_message(&self) -> String {
        if self.status().is_server_error() {
            tracing::error!(detail = %self, "internal error in the UI");
            "internal error: try again, and restart `till node run` if it persists".to_string()
        } else {
            self.to_string()
        }
    }

    /// The HTTP status an error page is sent with.
    pub fn status(&self) -> StatusCode {
        use tillsync_store::StoreError as S;
        match self {
            UiError::NotFound(_) | UiError::Store(S::NotFound(_) | S::UnknownSku(_)) => StatusCode::NOT_FOUND,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::Internal(_) | UiError::Store(S::Sqlite(_) | S::Corrupt(_) | S::Io(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            UiError::Store(S::Locked) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}
