//! The live progress line of long runs (`demo`, `--drain`): records, rate, lag and the
//! event-time frontier, redrawn on a terminal and absent otherwise (logs and pipes stay clean).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::JobMetrics;

/// A running progress line; [`Progress::finish`] clears it.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Shows the job's progress on stderr if it is a terminal; `total` (records to read, when
    /// known) turns the line into a bar.
    pub fn start(metrics: JobMetrics, total: Option<u64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { stop, thread: None };
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(4));
        let template =
            if total.is_some() { "{bar:30.cyan/blue} {pos:>10}/{len} {msg}" } else { "{spinner} {pos:>10} {msg}" };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let started = Instant::now();
                while !stopping.load(Ordering::Relaxed) {
                    let records = metrics.records.get();
                    bar.set_position(records);
                    bar.set_message(line(&metrics, records, started.elapsed()));
                    std::thread::sleep(Duration::from_millis(250));
                }
                bar.finish_and_clear();
            })
            .ok();
        Progress { stop, thread }
    }

    /// Stops and clears the line.
    pub fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// `records/s · lag N records · frontier 2025-11-24 14:03:00`.
fn line(metrics: &JobMetrics, records: u64, elapsed: Duration) -> String {
    let rate = records as f64 / elapsed.as_secs_f64().max(1e-3);
    let mut text = format!("records · {} records/s · lag {} records", human(rate), metrics.total_lag());
    if let Some(ms) = metrics.frontier_ms()
        && let Some(t) = chrono::DateTime::from_timestamp_millis(ms)
    {
        text.push_str(&format!(" · frontier {}", t.format("%Y-%m-%d %H:%M:%S")));
    }
    text
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reports_rate_lag_and_frontier() {
        let metrics = JobMetrics::default();
        metrics.lag(0, 10);
        metrics.lag(1, 5);
        metrics.frontier(1_764_000_000_000);
        let text = line(&metrics, 300_000, Duration::from_secs(2));
        assert!(text.contains("150.0k records/s"), "{text}");
        assert!(text.contains("lag 15 records"), "{text}");
        assert!(text.contains("frontier 2025-11-24 16:00:00"), "{text}");
    }
}
