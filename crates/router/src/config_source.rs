//! The config as `run` reads it, and how it notices a change
//! (`watch_config`):
//! - a file: read at start and at each reload; watched by its modification
//!   time and size, every 2 s;
//! - `$SNIROUTE_CONFIG_YAML`: read once (it cannot change under a running
//!   process);
//! - an `http://` or `https://` URL (`--config URL`): fetched at start
//!   (retried for up to 30 s while the server cannot be reached: a config
//!   server restarting beside a starting agent must not fail the task) and
//!   at each `SIGHUP`; watched every 10 s with conditional requests
//!   (`ETag`, `Last-Modified`, see [`discovery::Fetcher`]), and a changed
//!   document is reloaded. A fetch that fails keeps the config in force,
//!   logs once until fetches work again, and counts
//!   `sniroute_config_fetches_total{result="failure"}`.

use std::time::{Duration, Instant, SystemTime};

use config::{Config, ConfigError, ConfigSource, MAX_CONFIG_BYTES};
use discovery::{Fetched, Fetcher};

use crate::metrics::{registry, Counter, FetchResult, MapRef, CONFIG_FETCHES_TOTAL};

/// How often a watched file is looked at.
const FILE_WATCH: Duration = Duration::from_secs(2);
/// How often a watched URL is asked (conditionally).
const URL_WATCH: Duration = Duration::from_secs(10);
/// Bound on one fetch: connect, answer and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first fetch is retried at start.
const START_RETRIES_FOR: Duration = Duration::from_secs(30);

/// The config's source, with what watching it needs.
#[derive(Debug)]
pub(crate) struct Source {
    source: ConfigSource,
    /// A file's modification time and size when last read.
    stamp: Option<(SystemTime, u64)>,
    /// A URL's fetcher.
    fetcher: Option<Fetcher>,
    /// A document [`Source::changed`] fetched, for the next [`Source::load`].
    pending: Option<String>,
    /// The last watch fetch failed (logged once until one works).
    failing: bool,
    /// `sniroute_config_fetches_total`, by [`FetchResult::index`]
    /// (exported at 0 with a file too).
    fetches: [Counter; FetchResult::ALL.len()],
}

impl Source {
    /// Prepares `source`; for a URL, reads its CA file.
    ///
    /// # Errors
    /// A URL that is not http(s), or whose CA file cannot be read.
    pub(crate) fn new(source: ConfigSource) -> Result<Source, ConfigError> {
        let fetcher = match &source {
            ConfigSource::Url { url, ca_file } => Some(
                Fetcher::new(
                    url,
                    &source.display_name(),
                    ca_file.as_deref(),
                    FETCH_TIMEOUT,
                    MAX_CONFIG_BYTES,
                )
                .map_err(|e| ConfigError::about_source(&source, e))?,
            ),
            _ => None,
        };
        Ok(Source {
            source,
            stamp: None,
            fetcher,
            pending: None,
            failing: false,
            fetches: FetchResult::ALL
                .map_ref(|r| registry().counter(&CONFIG_FETCHES_TOTAL, &[("result", r.as_str())])),
        })
    }

    /// The source, as configured.
    pub(crate) fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// How often [`Source::changed`] should be asked.
    pub(crate) fn watch_every(&self) -> Duration {
        if self.fetcher.is_some() {
            URL_WATCH
        } else {
            FILE_WATCH
        }
    }

    /// The first load, at start: a URL that cannot be fetched is tried
    /// again (1 s apart, each failure logged) for up to 30 s; a document
    /// that does not validate is not.
    ///
    /// # Errors
    /// As [`Source::load`], once the retries are over.
    pub(crate) async fn load_first(&mut self) -> Result<Config, ConfigError> {
        let until = Instant::now() + START_RETRIES_FOR;
        loop {
            match self.fetch_text(false).await {
                Ok(text) => return self.parse(text),
                Err(e) if Instant::now() + Duration::from_secs(1) < until => {
                    tracing::warn!(error = %e, "cannot fetch the config; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the config again: the document [`Source::changed`] fetched if
    /// there is one, else the file, the variable, or a fresh fetch.
    ///
    /// # Errors
    /// The file cannot be read, the URL cannot be fetched, or the YAML is
    /// invalid (file, line and key named).
    pub(crate) async fn load(&mut self) -> Result<Config, ConfigError> {
        if let Some(text) = self.pending.take() {
            return self.parse(Some(text));
        }
        let text = self.fetch_text(false).await?;
        self.parse(text)
    }

    /// Whether the config changed since it was last read (for
    /// `watch_config`): a file's modification time or size, a URL's
    /// document (a conditional fetch; the document is kept for the next
    /// [`Source::load`]). A failed fetch is "no change".
    pub(crate) async fn changed(&mut self) -> bool {
        match &self.source {
            ConfigSource::File(_) => file_stamp(&self.source) != self.stamp,
            ConfigSource::EnvYaml(_) => false,
            ConfigSource::Url { .. } => match self.fetch_text(true).await {
                Ok(Some(text)) => {
                    self.pending = Some(text);
                    true
                }
                Ok(None) | Err(_) => false,
            },
        }
    }

    /// For a URL, fetches the document (`Ok(None)`: a conditional fetch
    /// found nothing new). For a file, takes its stamp (before it is read,
    /// so that a change made while it is read is seen as a change) and
    /// gives `Ok(None)`: [`Source::parse`] reads it.
    async fn fetch_text(&mut self, conditional: bool) -> Result<Option<String>, ConfigError> {
        let Some(fetcher) = &mut self.fetcher else {
            self.stamp = file_stamp(&self.source);
            return Ok(None);
        };
        let fetched = fetcher.fetch(conditional).await;
        if fetched.is_ok() && std::mem::take(&mut self.failing) {
            tracing::info!(url = %self.source.display_name(), "the config URL answers again");
        }
        match fetched {
            Ok(Fetched::Changed(text)) => {
                self.count(FetchResult::Changed);
                Ok(Some(text))
            }
            Ok(Fetched::Unchanged) => {
                self.count(FetchResult::Unchanged);
                Ok(None)
            }
            Err(e) => {
                self.count(FetchResult::Failure);
                if conditional && !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %e,
                        "cannot fetch the config to watch it; the config in force stays \
                         (logged once until a fetch works)");
                }
                Err(ConfigError::about_source(
                    &self.source,
                    format!("cannot fetch: {e}"),
                ))
            }
        }
    }

    fn count(&self, result: FetchResult) {
        self.fetches[result.index()].increment(1);
    }

    /// The config from fetched text, or from the file or variable.
    fn parse(&self, text: Option<String>) -> Result<Config, ConfigError> {
        match text {
            Some(text) => Config::from_source_text(&self.source, &text),
            None => Config::load(&self.source),
        }
    }
}

/// Reads the config once from `source`, fetching a URL (once, no retry):
/// what `sniroute check` and `sniroute discover` read.
///
/// # Errors
/// As [`Source::load`].
pub async fn load_config(source: &ConfigSource) -> Result<Config, ConfigError> {
    Source::new(source.clone())?.load().await
}

/// What identifies a config file's content for `watch_config`.
fn file_stamp(source: &ConfigSource) -> Option<(SystemTime, u64)> {
    match source {
        ConfigSource::File(path) => std::fs::metadata(path)
            .ok()
            .and_then(|md| Some((md.modified().ok()?, md.len()))),
        _ => None,
    }
}
