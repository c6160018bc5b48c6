use std::path::Path;
use tillsync_core::domain::SaleError;
use tillsync_core::money::MoneyError;
use tillsync_core::pin::PinError;
use tillsync_core::schema::SchemaError;

/// Errors of the node store. Messages are lowercase and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} is not a till: run `till node init --data {0} --offline` to make one, or check the path")]
    NotATill(String),
    #[error("{0} already holds a till; choose another folder")]
    AlreadyATill(String),
    #[error(
        "the till database was written by a newer version of till (schema {found}, this build knows {supported}): upgrade till"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("the till database is busy: another till process is using it; stop it or try again")]
    Locked,
    #[error("the till database is damaged ({0}): restore it from a backup")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
    /// The folder's key cannot be read (missing file, unset variable).
    #[error("{0}")]
    KeyMissing(String),
    /// The key does not open the database.
    #[error("{0}")]
    WrongKey(String),
    #[error("no product with SKU '{0}': check `till product list`")]
    UnknownSku(String),
    #[error("product '{0}' already exists: use `till product update`")]
    ProductExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "this is a point-in-time export: read-only (read it with `till status`, `till sales list`, `till report`; restore a backup to sell)"
    )]
    ReadOnly,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sale(#[from] SaleError),
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("a change does not fit the declared tables: {0}")]
    Schema(#[from] SchemaError),
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy) | Some(DatabaseLocked) => StoreError::Locked,
            Some(NotADatabase) | Some(DatabaseCorrupt) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(format!("unreadable stored JSON: {e}"))
    }
}

impl StoreError {
    pub(crate) fn from_open(e: rusqlite::Error, path: &Path) -> Self {
        StoreError::from(e).with_path(path)
    }

    pub(crate) fn with_path(self, path: &Path) -> Self {
        match self {
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", path.display())),
            other => other,
        }
    }
}
