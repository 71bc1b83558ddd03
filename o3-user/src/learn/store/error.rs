//! What can go wrong with the store, each as one line naming the file and what to do.

use std::path::Path;

use rusqlite::ErrorCode;

/// A store failure: one line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database {path} is locked by another writer for more than 5 s; retry when the other o3 finishes")]
    Busy { path: String },
    #[error("disk full while writing {path}: free space and resume; nothing was lost")]
    Full { path: String },
    #[error("{path} is not an o3 database or is damaged ({detail}): move it away (o3 then starts a new one) or pass another --db")]
    Corrupt { path: String, detail: String },
    #[error("the database {path} is read-only ({detail}): make it (and its folder) writable or pass another --db")]
    ReadOnly { path: String, detail: String },
    #[error("cannot open the database {path} ({detail}): check that its folder exists and is writable, or pass another --db")]
    CantOpen { path: String, detail: String },
    #[error("the database {path} has schema version {found}, newer than this o3 knows (version {supported}): upgrade o3 or pass another --db")]
    TooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("cannot create {dir} for the database: {source}; create it or pass another --db")]
    CreateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no run {run_id} in {path}: begin_run first")]
    NoRun { path: String, run_id: i64 },
    #[error("{what} for {path}: {detail}")]
    Invalid {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: a stored {what} does not decode ({detail}); the file was changed by another program: move it away or pass another --db")]
    Data {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{op} in {path} failed: {source}")]
    Sqlite {
        path: String,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    pub(super) fn from_sqlite(path: &Path, op: &'static str, e: rusqlite::Error) -> StoreError {
        let path_s = path.display().to_string();
        let code = e.sqlite_error_code();
        let detail = e.to_string();
        match code {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Busy { path: path_s }
            }
            Some(ErrorCode::DiskFull) => StoreError::Full { path: path_s },
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
                path: path_s,
                detail,
            },
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
                path: path_s,
                detail,
            },
            Some(ErrorCode::CannotOpen) => StoreError::CantOpen {
                path: path_s,
                detail,
            },
            _ => StoreError::Sqlite {
                path: path_s,
                op,
                source: e,
            },
        }
    }
}
