//! Commits to tables with Change Data Feed, which delta-rs built without DataFusion will
//! not make: its protocol check lists the `changeDataFeed` writer feature only with
//! DataFusion (ADR 0018 keeps DataFusion out for build time). The commit is what
//! delta-rs's default log store does for its own: the actions as the next version's log
//! entry, put if absent. A version another writer took first is a conflict: the error
//! stops the pipeline, which starts again from the table as it now is (ADR 0019).
//!
//! After a commit, a checkpoint every `delta.checkpointInterval` versions (100 by
//! default) and the cleanup of expired log files, as delta-rs does after its own.
//!
//! This module gives way to `CommitBuilder` once delta-rs lists the feature without
//! DataFusion.

use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Transaction};
use deltalake::logstore::CommitOrBytes;
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{DeltaResult, DeltaTable};
use std::collections::HashMap;

/// Commits `actions` as the version after `table`'s, then brings `table` to it.
pub async fn commit(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    info: HashMap<String, serde_json::Value>,
    txn: Option<Transaction>,
) -> DeltaResult<u64> {
    let version = table.version().map_or(0, |v| v + 1);
    let data = CommitData::new(actions, operation, info, txn.into_iter().collect());
    let bytes = data.get_bytes()?;
    table
        .log_store()
        .write_commit_entry(
            version as _,
            CommitOrBytes::LogBytes(bytes),
            uuid::Uuid::new_v4(),
        )
        .await?;
    table.update_incremental(Some(version as _)).await?;
    let config = table.snapshot()?.table_config();
    let (interval, cleanup) = (
        config.checkpoint_interval().get(),
        config.enable_expired_log_cleanup(),
    );
    if version > 0 && version.is_multiple_of(interval) {
        deltalake::checkpoints::create_checkpoint(table, None).await?;
        if cleanup {
            deltalake::checkpoints::cleanup_metadata(table, None).await?;
        }
    }
    Ok(version)
}
