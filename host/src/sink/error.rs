//! What goes wrong in a sink, and what it means for retrying.

use crate::error::{ErrorKind, HostPanic};
use crate::plugin::{LoadError, PluginFailure};
use crate::storage::StorageError;

/// A sink that cannot write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Parquet writer failed (encoding, or uploading a file).
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
    #[error("writing {table}: {source}")]
    Iceberg {
        table: String,
        #[source]
        source: ::iceberg::Error,
    },
    #[error("writing {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("unsupported output URL `{url}`: the Iceberg catalog cannot be opened: {source}")]
    Catalog {
        url: String,
        #[source]
        source: ::iceberg::Error,
    },
    /// The output belongs to something else (another table, another pipeline).
    #[error("writing {what}: {message}")]
    Config { what: String, message: String },
    /// Rows do not fit the output's schema.
    #[error("writing {table}: {source}")]
    Schema {
        table: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Standard output is closed (the reading program went away) or failed.
    #[error("writing to standard output: {source} (the program reading it stopped?)")]
    Stdout {
        #[source]
        source: std::io::Error,
    },
    /// Not a `#[source]`: the message already says everything, once.
    #[error("{0}; the checkpoint stays before this batch")]
    Plugin(PluginFailure),
    #[error(transparent)]
    LoadPlugin(#[from] LoadError),
    #[error(transparent)]
    Panic(#[from] HostPanic),
    /// The PostgreSQL target of a projection failed (its kind from the query's SQLSTATE).
    #[error("PostgreSQL target: {message}")]
    Target { message: String, kind: ErrorKind },
}

impl SinkError {
    /// A failure of the projection's target, said in the sink's own terms.
    pub fn target(e: crate::source::SourceError) -> SinkError {
        SinkError::Target {
            message: e
                .to_string()
                .replace("source.url", "the postgres sink's url"),
            kind: e.kind(),
        }
    }
}

impl SinkError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SinkError::Storage(e) => e.kind(),
            SinkError::Write { .. } => ErrorKind::Storage,
            SinkError::Iceberg { source, .. } | SinkError::Catalog { source, .. } => {
                iceberg_kind(source)
            }
            SinkError::Delta { source, .. } => delta_kind(source),
            SinkError::Schema { .. } => ErrorKind::Schema,
            SinkError::Config { .. } => ErrorKind::Config,
            // Nobody reads what is printed any more: retrying would print into nothing.
            SinkError::Stdout { .. } => ErrorKind::Config,
            SinkError::Plugin(_) | SinkError::LoadPlugin(_) => ErrorKind::Plugin,
            SinkError::Panic(_) => ErrorKind::Internal,
            SinkError::Target { kind, .. } => *kind,
        }
    }
}

/// What an iceberg-rust error means for retrying: a lost commit race or a catalog that
/// says to try again is transient, data or a schema the table cannot take is not, and
/// the rest (I/O underneath) is storage.
fn iceberg_kind(e: &::iceberg::Error) -> ErrorKind {
    use ::iceberg::ErrorKind as K;
    match e.kind() {
        K::CatalogCommitConflicts | K::PreconditionFailed => ErrorKind::Catalog,
        _ if e.retryable() => ErrorKind::Catalog,
        K::DataInvalid | K::FeatureUnsupported => ErrorKind::Schema,
        K::NamespaceNotFound
        | K::TableNotFound
        | K::NamespaceAlreadyExists
        | K::TableAlreadyExists => ErrorKind::Config,
        _ => ErrorKind::Storage,
    }
}

/// What a delta-rs error means for retrying: storage that failed or a commit that lost
/// a race (after delta-rs's own retries) may succeed again; data or a schema the table
/// cannot take, or a table that is not one, will not.
fn delta_kind(e: &deltalake::DeltaTableError) -> ErrorKind {
    use deltalake::DeltaTableError as E;
    match e {
        E::ObjectStore { .. } | E::Io { .. } => ErrorKind::Storage,
        E::Transaction { .. } | E::VersionAlreadyExists(_) => ErrorKind::Catalog,
        E::SchemaMismatch { .. } | E::Arrow { .. } | E::InvalidData { .. } => ErrorKind::Schema,
        E::NotATable(_) | E::InvalidTableLocation(_) => ErrorKind::Config,
        _ => ErrorKind::Storage,
    }
}

/// A sink that failed, by name.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {error}")]
pub struct NamedSinkError {
    pub sink: String,
    pub error: SinkError,
}
