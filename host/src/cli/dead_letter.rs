//! `weir dead-letter list` and `replay`: the events plugins set aside under
//! `on_error = "dead-letter"`, and their delivery once the cause is fixed.
//!
//! A replay sends each dead letter through the pipeline from where it failed: a
//! transform's dead letter through that transform and the ones after it, then into every
//! sink; a sink's dead letter into that sink only. Parquet sinks get a file of its own per
//! dead letter (named after it, so running a replay again rewrites instead of repeating)
//! and the letter is removed only once every sink has it. The pipeline must be stopped:
//! its slot must not be in use.

use crate::config::PipelineConfig;
use crate::lsn::Lsn;
use crate::plugin::{DeadLetter, DeadLetters, Plugins, Stage};
use crate::stages::Stages;
use anyhow::bail;

/// The dead-letter location of a pipeline, or why it has none.
fn location(config: &PipelineConfig) -> anyhow::Result<DeadLetters> {
    let Some(url) = config.state_url() else {
        bail!("the pipeline has no dead-letter location: add a parquet sink or [state] url");
    };
    Ok(DeadLetters::open(url, &config.source.slot)?)
}

/// One line per dead letter: stage, position, table, plugin, error.
pub async fn list(config: &PipelineConfig) -> anyhow::Result<Vec<DeadLetter>> {
    let dead_letters = location(config)?;
    let letters = dead_letters.list().await?;
    Ok(letters.into_iter().map(|(_, l)| l).collect())
}

/// The line `list` prints for a dead letter.
pub fn describe(l: &DeadLetter) -> String {
    format!(
        "{:<12} {:>12} seq {:<5} {:<24} {}@{}: {} (set aside {})",
        l.stage.to_string(),
        Lsn(l.commit_lsn).to_string(),
        l.seq,
        l.table,
        l.plugin,
        l.version,
        l.error,
        l.written_at
    )
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub delivered: usize,
    pub failed: usize,
}

/// Delivers every dead letter (or those of `stage`) from where it failed.
pub async fn replay(config: &PipelineConfig, stage: Option<Stage>) -> anyhow::Result<Replayed> {
    let dead_letters = location(config)?;
    ensure_stopped(config).await?;
    let mut letters = dead_letters.list().await?;
    letters.retain(|(_, l)| stage.is_none_or(|s| l.stage == s));
    letters.sort_by_key(|(_, l)| (l.commit_lsn, l.seq));
    let mut done = Replayed::default();
    if letters.is_empty() {
        return Ok(done);
    }

    let plugins = Plugins::setup(config)?;
    let mut stages = Stages::for_replay(config, &plugins).await?;
    for (key, letter) in letters {
        let where_ = format!(
            "{} {} seq {} ({})",
            letter.stage,
            Lsn(letter.commit_lsn),
            letter.seq,
            letter.table
        );
        match stages.replay(&letter).await {
            Ok(()) => {
                dead_letters.remove(&key).await?;
                done.delivered += 1;
                println!("replayed  {where_}");
            }
            Err(e) => {
                done.failed += 1;
                println!("failed    {where_}: {e}");
            }
        }
    }
    Ok(done)
}

/// Refuses to replay beside a running pipeline: its sinks would see the same events
/// from two writers.
async fn ensure_stopped(config: &PipelineConfig) -> anyhow::Result<()> {
    let control = crate::source::Control::connect(&config.source.url).await?;
    if control.slot_active(&config.source.slot).await? {
        bail!(
            "the slot `{}` is in use: stop the pipeline before replaying its dead letters",
            config.source.slot
        );
    }
    Ok(())
}
