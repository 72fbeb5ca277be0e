//! What every library error shares: a kind that decides whether running again can help
//! (DESIGN.md decision 9), and the conversion of a panic in host code into an error.

/// What failed, in the terms that decide what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server or an endpoint could not be reached, or the connection broke.
    Connect,
    /// Reading or writing output or state failed (a full disk, an unwritable directory,
    /// an object store that did not answer).
    Storage,
    /// A catalog refused or lost a commit that may succeed when tried again (a
    /// concurrent commit, a catalog that did not answer).
    Catalog,
    /// The data does not fit the output's schema, or the schema cannot change as the
    /// source did.
    Schema,
    /// The configuration or the server's setup is wrong.
    Config,
    /// A role or credential lacks a right.
    Permission,
    /// A plugin failed under its failure policy, or could not be loaded.
    Plugin,
    /// Something weir reads is corrupt or not what it wrote.
    Data,
    /// A defect in weir itself (a panic in host code).
    Internal,
}

impl ErrorKind {
    /// Whether running again, unchanged, may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect | ErrorKind::Storage | ErrorKind::Catalog
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Storage => "storage",
            ErrorKind::Catalog => "catalog",
            ErrorKind::Schema => "schema",
            ErrorKind::Config => "config",
            ErrorKind::Permission => "permission",
            ErrorKind::Plugin => "plugin",
            ErrorKind::Data => "data",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A panic in host code, caught at the edge of the task it happened in.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error in {stage}: {message} (a defect in weir: please report it)")]
pub struct HostPanic {
    /// What the task was doing: `transform chain`, `sink plugin write`, ...
    pub stage: String,
    pub message: String,
}

impl HostPanic {
    /// From a task's `JoinError` (a panic, or a cancellation at runtime shutdown).
    pub fn from_join(stage: &str, e: tokio::task::JoinError) -> HostPanic {
        let message = match e.try_into_panic() {
            Ok(payload) => panic_message(payload.as_ref()),
            Err(e) => e.to_string(),
        };
        HostPanic {
            stage: stage.into(),
            message,
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Runs async host code (a sink's write or flush); a panic in it becomes an error that
/// names `stage`, never an abort.
pub async fn guarded<T>(
    stage: &str,
    f: impl std::future::Future<Output = T>,
) -> Result<T, HostPanic> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|payload| HostPanic {
            stage: stage.into(),
            message: panic_message(payload.as_ref()),
        })
}

/// Runs blocking host code (a plugin call, fsync, compiling a component) on a blocking
/// thread; a panic there becomes an error that names `stage`, never an abort.
pub async fn blocking<T: Send + 'static>(
    stage: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HostPanic> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HostPanic::from_join(stage, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_async_host_code_is_an_error_naming_the_stage() {
        let err = guarded("sink write", async { panic!("no writer open") })
            .await
            .map(|()| ())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "internal error in sink write: no writer open (a defect in weir: please report it)"
        );
        assert_eq!(guarded("sink flush", async { 7 }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panic_in_blocking_host_code_is_an_error_naming_the_stage() {
        let err = blocking("transform chain", || -> u32 {
            panic!("index out of bounds")
        })
        .await
        .unwrap_err();
        assert_eq!(err.stage, "transform chain");
        assert_eq!(
            err.to_string(),
            "internal error in transform chain: index out of bounds (a defect in weir: please report it)"
        );
        let n = 7;
        let err = blocking("sink", move || -> u32 { panic!("{n} items") })
            .await
            .unwrap_err();
        assert_eq!(err.message, "7 items");
        assert_eq!(blocking("ok", || 3).await.unwrap(), 3);
    }

    #[test]
    fn only_connection_storage_and_catalog_failures_are_retried() {
        use ErrorKind::*;
        let transient: Vec<_> = [
            Connect, Storage, Catalog, Schema, Config, Permission, Plugin, Data, Internal,
        ]
        .into_iter()
        .filter(|k| k.is_transient())
        .collect();
        assert_eq!(transient, [Connect, Storage, Catalog]);
    }
}
