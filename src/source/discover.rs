//! Partition discovery: the topic's partitions as the job knows them, refreshed from broker
//! metadata in the background, so partitions added while the job runs are read by the
//! worker that owns them (`partition % peers == index`) within one refresh interval.
//!
//! Metadata requests block for a round trip, so they run on the IO runtime, never on a
//! worker thread; workers only read an atomic version and, when it moved, the new entries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::kafka::{KafkaConfig, KafkaSetupError, Metadata};

/// The partitions of the topic and where each starts, shared by the workers of a process.
#[derive(Debug, Default)]
pub struct TopicPartitions {
    /// Bumped whenever partitions are added (or discovery failed).
    version: AtomicU64,
    state: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// Every partition with the offset reading starts at.
    starts: BTreeMap<i32, i64>,
    /// Why discovery stopped the job.
    error: Option<KafkaSetupError>,
}

impl TopicPartitions {
    /// The partitions known at start, each with the offset reading starts at.
    pub fn new(starts: BTreeMap<i32, i64>) -> Arc<Self> {
        Arc::new(TopicPartitions { version: AtomicU64::new(0), state: Mutex::new(Known { starts, error: None }) })
    }

    /// A number that changes whenever [`TopicPartitions::since`] has news.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Every partition and its start offset.
    pub fn starts(&self) -> BTreeMap<i32, i64> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).starts.clone()
    }

    /// The error that stopped discovery, if any (taken once).
    pub fn take_error(&self) -> Option<KafkaSetupError> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).error.take()
    }

    /// Takes in partitions found by a metadata refresh; returns those that were new.
    fn add(&self, found: BTreeMap<i32, i64>) -> Vec<i32> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let new: Vec<i32> = found.keys().filter(|p| !state.starts.contains_key(p)).copied().collect();
        if !new.is_empty() {
            state.starts.extend(found.into_iter().filter(|(p, _)| new.contains(p)));
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        new
    }

    fn fail(&self, error: KafkaSetupError) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).error = Some(error);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// Refreshes `known` from the topic's metadata every `every` until the returned guard is
/// dropped or a new partition cannot be read from its beginning (retention deleted records nobody
/// read: one clear error, never a silent skip). Brokers that do not answer are retried at
/// the next refresh; the source itself reports a lost broker.
pub fn spawn(runtime: &Handle, kafka: KafkaConfig, known: Arc<TopicPartitions>, every: Duration) -> Discovery {
    // One blocking thread owns the metadata client; it ends when the ticker does.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let ticker = runtime.spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await; // the first tick is now: the start already read the metadata
        loop {
            ticks.tick().await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    runtime.spawn_blocking(move || {
        let mut client = None;
        while rx.blocking_recv().is_some() {
            if client.is_none() {
                client = kafka.metadata().map_err(|e| tracing::debug!(error = %e, "partition discovery")).ok();
            }
            let Some(metadata) = &client else { continue };
            match refresh(&kafka.topic, metadata, &known) {
                Ok(()) => {}
                Err(RefreshError::Fatal(e)) => {
                    known.fail(e);
                    return;
                }
                Err(RefreshError::Retry(e)) => tracing::debug!(error = %e, "partition discovery; retrying"),
            }
        }
    });
    Discovery { ticker }
}

/// Discovery running in the background; dropping it stops it (the job's end, whatever the
/// runtime it ran on does next).
pub struct Discovery {
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Why a refresh failed.
#[derive(Debug)]
pub enum RefreshError {
    /// The job must stop.
    Fatal(KafkaSetupError),
    /// Try again at the next refresh.
    Retry(KafkaSetupError),
}

/// One refresh: adds the partitions of `topic` that `known` lacks, each from offset 0.
pub fn refresh(topic: &str, metadata: &Metadata<'_>, known: &TopicPartitions) -> Result<(), RefreshError> {
    let count = metadata.partition_count().map_err(RefreshError::Retry)?;
    let have = known.starts();
    let mut found = BTreeMap::new();
    for p in (0..count).filter(|p| !have.contains_key(p)) {
        let (low, _) = metadata.watermark(p).map_err(RefreshError::Retry)?;
        if low > 0 {
            return Err(RefreshError::Fatal(KafkaSetupError::Unread { partition: p, low }));
        }
        found.insert(p, low);
    }
    for p in known.add(found) {
        tracing::info!(partition = p, topic, "partition added to the topic; reading it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_partitions_bump_the_version() {
        let known = TopicPartitions::new(BTreeMap::from([(0, 5), (1, 0)]));
        let v = known.version();
        assert!(known.add(BTreeMap::from([(0, 9), (1, 0)])).is_empty());
        assert_eq!(known.version(), v, "nothing new");
        assert_eq!(known.add(BTreeMap::from([(1, 0), (2, 0), (3, 0)])), vec![2, 3]);
        assert_ne!(known.version(), v);
        assert_eq!(known.starts(), BTreeMap::from([(0, 5), (1, 0), (2, 0), (3, 0)]), "known starts are kept");
        known.fail(KafkaSetupError::Unread { partition: 4, low: 10 });
        assert!(matches!(known.take_error(), Some(KafkaSetupError::Unread { partition: 4, low: 10 })));
        assert!(known.take_error().is_none());
    }
}
