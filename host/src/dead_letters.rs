//! `weir dead-letter list` and `replay`: the events plugins set aside under
//! `on_error = "dead-letter"`, and their delivery once the cause is fixed.
//!
//! A replay sends each dead letter through the pipeline from where it failed: a
//! transform's dead letter through that transform and the ones after it, then into every
//! sink; a sink's dead letter into that sink only. Parquet sinks get a file of its own per
//! dead letter (named after it, so running a replay again rewrites instead of repeating)
//! and the letter is removed only once every sink has it. The pipeline must be stopped:
//! its slot must not be in use.

use crate::config::{PipelineConfig, SinkConfig};
use crate::lsn::Lsn;
use crate::pipeline::{self, Plugins};
use crate::plugin::{DeadLetter, DeadLetters, SinkPlugin};
use crate::sink::parquet::ParquetSink;
use anyhow::{Context, bail};

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
    let letters = dead_letters.list().await.map_err(anyhow::Error::msg)?;
    Ok(letters.into_iter().map(|(_, l)| l).collect())
}

/// The line `list` prints for a dead letter.
pub fn describe(l: &DeadLetter) -> String {
    format!(
        "{:<12} {:>12} seq {:<5} {:<24} {}@{}: {} (set aside {})",
        l.stage,
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
pub async fn replay(config: &PipelineConfig, stage: Option<&str>) -> anyhow::Result<Replayed> {
    let dead_letters = location(config)?;
    ensure_stopped(config).await?;
    let mut letters = dead_letters.list().await.map_err(anyhow::Error::msg)?;
    letters.retain(|(_, l)| stage.is_none_or(|s| l.stage == s));
    letters.sort_by_key(|(_, l)| (l.commit_lsn, l.seq));
    let mut done = Replayed::default();
    if letters.is_empty() {
        return Ok(done);
    }

    let plugins = Plugins::setup(config)?;
    let chain = {
        let (config, plugins) = (config.clone(), plugins.clone());
        tokio::task::spawn_blocking(move || pipeline::load_chain(&config, &plugins))
            .await
            .expect("plugin loading does not panic")?
    };
    let mut chain = chain;
    let mut sinks = ReplaySinks::open(config, &plugins).await?;

    for (key, letter) in letters {
        let where_ = format!(
            "{} {} seq {} ({})",
            letter.stage,
            Lsn(letter.commit_lsn),
            letter.seq,
            letter.table
        );
        let result: anyhow::Result<()> = async {
            let event = letter.event().map_err(anyhow::Error::msg)?;
            match letter.stage_parts() {
                Some(("transform", i)) => {
                    let Some(mut c) = chain.take() else {
                        bail!("the pipeline has no transforms now");
                    };
                    let before = c.plugins().get(i).map_or(0, |p| p.dead_lettered());
                    let (c, out) = tokio::task::spawn_blocking(move || {
                        let out = c.apply_from(i, event);
                        (c, out)
                    })
                    .await
                    .expect("the transform chain does not panic");
                    let again = c.plugins().get(i).map_or(0, |p| p.dead_lettered()) > before;
                    chain = Some(c);
                    let out = out?;
                    if again {
                        bail!("the plugin set it aside again (see the log above)");
                    }
                    sinks.deliver(&out, None, &letter).await
                }
                Some(("sink", i)) => sinks.deliver(&event, Some(i), &letter).await,
                _ => bail!("unknown stage `{}`", letter.stage),
            }
        }
        .await;
        match result {
            Ok(()) => {
                dead_letters
                    .remove(&key)
                    .await
                    .map_err(anyhow::Error::msg)?;
                done.delivered += 1;
                println!("replayed  {where_}");
            }
            Err(e) => {
                done.failed += 1;
                println!("failed    {where_}: {e:#}");
            }
        }
    }
    Ok(done)
}

/// Refuses to replay beside a running pipeline: its sinks would see the same events
/// from two writers.
async fn ensure_stopped(config: &PipelineConfig) -> anyhow::Result<()> {
    let control = crate::source::Control::connect(&config.source.url).await?;
    let active = control
        .client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await
        .context("reading the slot's state")?
        .is_some_and(|row| row.get::<_, bool>(0));
    if active {
        bail!(
            "the slot `{}` is in use: stop the pipeline before replaying its dead letters",
            config.source.slot
        );
    }
    Ok(())
}

/// The pipeline's sinks, opened for replay (checkpoints untouched).
struct ReplaySinks {
    sinks: Vec<ReplaySink>,
}

enum ReplaySink {
    Parquet(ParquetSink),
    Iceberg(Box<crate::sink::iceberg::IcebergSink>),
    Plugin(Option<SinkPlugin>),
}

impl ReplaySinks {
    async fn open(config: &PipelineConfig, plugins: &Plugins) -> anyhow::Result<ReplaySinks> {
        let mut sinks = Vec::new();
        for sink in &config.sinks {
            sinks.push(match sink {
                SinkConfig::Parquet(p) => ReplaySink::Parquet(
                    ParquetSink::open_for_replay(p.clone(), &config.source.slot).await?,
                ),
                SinkConfig::Iceberg(c) => ReplaySink::Iceberg(Box::new(
                    crate::sink::iceberg::IcebergSink::open(c.clone(), &config.source.slot).await?,
                )),
                SinkConfig::Plugin(p) => {
                    let engine = plugins.engine.clone().expect("made for plugin sinks");
                    let p = p.clone();
                    let plugin = tokio::task::spawn_blocking(move || {
                        SinkPlugin::load(&engine, &p.plugin, &p.config, p.flush_interval)
                    })
                    .await
                    .expect("plugin loading does not panic")?;
                    ReplaySink::Plugin(Some(plugin))
                }
            });
        }
        Ok(ReplaySinks { sinks })
    }

    /// Delivers `batch` to every sink, or to sink `only`.
    async fn deliver(
        &mut self,
        batch: &weir_sdk::Batch,
        only: Option<usize>,
        letter: &DeadLetter,
    ) -> anyhow::Result<()> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let name = format!(
            "replay-{}-{:016X}-{:010}",
            letter.stage, letter.commit_lsn, letter.seq
        );
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            match sink {
                ReplaySink::Parquet(p) => {
                    p.write_replay(batch, &name).await?;
                }
                ReplaySink::Iceberg(s) => s.write_replay(batch, &name).await?,
                ReplaySink::Plugin(slot) => {
                    let mut plugin = slot.take().context("the sink plugin was lost")?;
                    let events = batch.clone();
                    let (plugin, result) = tokio::task::spawn_blocking(move || {
                        let r = plugin.replay(&events);
                        (plugin, r)
                    })
                    .await
                    .expect("sink plugin calls do not panic");
                    *slot = Some(plugin);
                    result.map_err(|e| anyhow::anyhow!("sink {i}: {e}"))?;
                }
            }
        }
        Ok(())
    }
}
