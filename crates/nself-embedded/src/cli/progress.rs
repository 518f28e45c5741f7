//! Download progress for `fetch` and `start`: indicatif bars on a terminal, a few plain log
//! lines otherwise (CI logs, pipes). Nothing is shown for a warm cache.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pglite_fetch::{Progress, ProgressFn};

/// Reports downloads; call [`Reporter::finish`] when the fetch is over.
#[derive(Clone)]
pub(crate) struct Reporter {
    inner: Arc<Mutex<State>>,
}

enum State {
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
    /// Per file: the last quarter reported (0..=4), so a log gets at most five lines a file.
    Lines(HashMap<String, u64>),
}

impl Reporter {
    pub(crate) fn new() -> Reporter {
        let state = if std::io::stderr().is_terminal() {
            State::Bars { multi: MultiProgress::new(), bars: HashMap::new() }
        } else {
            State::Lines(HashMap::new())
        };
        Reporter { inner: Arc::new(Mutex::new(state)) }
    }

    /// The callback to put in `FetchOptions::progress`.
    pub(crate) fn callback(&self) -> ProgressFn {
        let reporter = self.clone();
        Arc::new(move |progress| reporter.report(progress))
    }

    fn report(&self, progress: Progress) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            State::Bars { multi, bars } => {
                let bar = bars.entry(progress.file.clone()).or_insert_with(|| new_bar(multi, &progress));
                if let Some(total) = progress.total {
                    bar.set_length(total);
                }
                bar.set_position(progress.done);
                if progress.total.is_some_and(|total| progress.done >= total) {
                    bar.finish();
                }
            }
            State::Lines(seen) => {
                let quarter = match progress.total {
                    Some(total) if total > 0 => (progress.done.min(total) * 4) / total,
                    _ => 0,
                };
                let previous = seen.insert(progress.file.clone(), quarter);
                if previous.is_none() {
                    tracing::info!(file = %progress.file, source = %progress.source, "downloading");
                } else if previous != Some(quarter) {
                    tracing::info!(file = %progress.file, done = progress.done, total = progress.total, "downloading");
                }
            }
        }
    }

    /// Ends every bar still drawn.
    pub(crate) fn finish(&self) {
        if let State::Bars { bars, .. } = &mut *self.inner.lock().unwrap_or_else(|e| e.into_inner()) {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }
}

fn new_bar(multi: &MultiProgress, progress: &Progress) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(progress.total.unwrap_or(0)));
    let style = ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(progress.file.clone());
    bar
}
