//! The broker-specific wait of the exactly-once check: read an end until two reads
//! [`SETTLE`] apart agree.
//!
//! A produce request still queued on a dropped connection is processed by the broker
//! once it answers again; seen here: a 1 MB request stored ~100 ms *after* a fresh
//! connection had read the tail. Two equal reads this far apart, with the broker
//! answering, leave no such request behind in practice (docs/ARCHITECTURE.md states the
//! residual risk).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long an end must stay unchanged before it is trusted.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// An end being settled: the last read, compared with each new one.
///
/// ```text
/// let mut settling = Settling::new(read().await?);
/// loop {
///     if !settling.pause(&cancel).await { return Ok(None) }  // cancelled
///     if settling.agrees(read().await?) { return Ok(Some(settling.into_inner())) }
/// }
/// ```
#[derive(Debug)]
pub struct Settling<T> {
    last: T,
}

impl<T: PartialEq + Sync> Settling<T> {
    /// Starts from the first read.
    pub fn new(first: T) -> Self {
        Self { last: first }
    }

    /// Waits [`SETTLE`]; `false` when `cancel` fired first.
    pub async fn pause(&self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(SETTLE) => true,
        }
    }

    /// Takes a new read: `true` when it equals the last one (the end is settled), else
    /// it becomes the last one.
    pub fn agrees(&mut self, again: T) -> bool {
        if again == self.last {
            return true;
        }
        self.last = again;
        false
    }

    /// The last read.
    pub fn last(&self) -> &T {
        &self.last
    }

    /// The last read, settled or not.
    pub fn into_inner(self) -> T {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_end_settles_when_two_reads_agree_and_a_pause_ends_when_cancelled() {
        let cancel = CancellationToken::new();
        let mut settling = Settling::new(3);
        let mut reads = [5, 5].into_iter();
        let started = tokio::time::Instant::now();
        let mut pauses = 0;
        loop {
            assert!(settling.pause(&cancel).await);
            pauses += 1;
            if settling.agrees(reads.next().unwrap()) {
                break;
            }
        }
        assert_eq!((pauses, settling.into_inner()), (2, 5));
        assert_eq!(started.elapsed(), SETTLE * 2);
        cancel.cancel();
        assert!(!Settling::new(1).pause(&cancel).await);
    }
}
