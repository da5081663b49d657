//! Checks of the `config` target: any text given to
//! [`Config::from_yaml_str`] is answered without a panic, and every error
//! points into the text.
//!
//! The properties (see `README.md`):
//! - no panic, whatever the text;
//! - an error names the file it was given, has a message, and displays as
//!   `FILE:LINE:COLUMN: message` (plus ` (at PATH)` when it has a path);
//! - every error has a line and a column, both from 1, that lie within the
//!   text: the line exists and the column is at most one past its last
//!   character (or, for the end of a text whose last line has no line
//!   break, libyaml's position for it: column 1 of the line after), with
//!   lines split as libyaml splits them (YAML 1.1: also at
//!   U+0085, U+2028, U+2029) or as saphyr-parser does (YAML 1.2: `\n`,
//!   `\r\n`, `\r`), since positions come from either parser;
//! - the only errors without a position are the whole-file ones that
//!   `from_yaml_str` can give: an empty document ("the configuration is
//!   empty"), and only when serde_yaml itself reads the text as no
//!   document or a node without content (`~`, `!!str`, `&a`);
//!   the I/O and encoding errors of `Config::load` never reach this function;
//! - a reader error about a control character points at one;
//! - an accepted config holds what `Config`'s docs promise (listeners and
//!   routes not empty, unique route names and listener addresses, default
//!   routes that exist, upstreams on every route but `marathon_app` ones
//!   (none there), limits in range, health
//!   check timeouts within their interval), and renders.

use config::{Config, ConfigError, ConfigSource, MAX_CLIENT_HELLO_BYTES, MIN_CLIENT_HELLO_BYTES};

/// The file name every input is given.
pub const FILE: &str = "fuzz.yaml";

/// The start of the one whole-file message `from_yaml_str` may give.
pub const EMPTY: &str = "the configuration is empty";

/// Decodes a fuzz input: valid UTF-8 as it is, anything else through
/// [`String::from_utf8_lossy`] (invalid bytes become U+FFFD), as a config
/// that reached `from_yaml_str` is always text.
pub fn text_of(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Parses `text` and checks the answer; returns it.
pub fn check_config(text: &str) -> Result<Config, ConfigError> {
    let answer = Config::from_yaml_str(text, FILE);
    match &answer {
        Ok(config) => check_accepted(config),
        Err(e) => check_error(text, e),
    }
    answer
}

/// Checks an error for `text`.
pub fn check_error(text: &str, e: &ConfigError) {
    assert_eq!(e.file(), FILE);
    assert!(!e.message().is_empty(), "an empty message: {e:?}");
    if let Some(path) = e.path() {
        assert!(!path.is_empty(), "an empty path: {e:?}");
    }
    let shown = e.to_string();
    let (line, column) = match (e.line(), e.column()) {
        (Some(line), Some(column)) => (line, column),
        (None, None) => {
            assert!(
                e.message().starts_with(EMPTY),
                "an error without a position: {e:?}\n--- text ---\n{text:?}"
            );
            assert_eq!(e.path(), None, "{e:?}");
            assert_eq!(shown, format!("{FILE}: {}", e.message()));
            check_really_empty(text, e);
            return;
        }
        _ => panic!("a line without a column or a column without a line: {e:?}"),
    };
    assert!(
        line >= 1 && column >= 1,
        "positions count from 1: {e:?}\n--- text ---\n{text:?}"
    );
    // `from_yaml_str` drops a leading byte order mark before parsing.
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    assert!(
        within(&lines(body, Breaks::Yaml11), line, column)
            || within(&lines(body, Breaks::Yaml12), line, column),
        "position {line}:{column} is outside the text: {e:?}\n--- text ---\n{body:?}"
    );
    let mut want = format!("{FILE}:{line}:{column}: {}", e.message());
    if let Some(path) = e.path() {
        want.push_str(&format!(" (at {path})"));
    }
    assert_eq!(shown, want);
    if e.message()
        .starts_with("control characters are not allowed")
    {
        let c = char_at(body, line, column, Breaks::Yaml11);
        assert!(
            c.is_some_and(|c| !yaml11_printable(c)),
            "a control character error at {line}:{column}, where the text has {c:?}: {e:?}\n--- text ---\n{body:?}"
        );
    }
}

/// An "empty" error must be about a text serde_yaml reads as no document,
/// or as one node without content: null, or an empty scalar with only a tag
/// or an anchor (`!!str`, `!x`, `&a`; a typed tag such as `!!int` makes
/// serde_yaml refuse the empty string).
fn check_really_empty(text: &str, e: &ConfigError) {
    fn no_content(v: &serde_yaml::Value) -> bool {
        match v {
            serde_yaml::Value::Null => true,
            serde_yaml::Value::String(s) => s.is_empty(),
            serde_yaml::Value::Tagged(t) => no_content(&t.value),
            _ => false,
        }
    }
    // YAML allows a byte order mark before a document; serde_yaml skips
    // one, the config reader skips them all.
    let text = text.trim_start_matches('\u{feff}');
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(v) if no_content(&v) => {}
        // serde_yaml's own words for a stream without a document, and for a
        // typed tag on nothing.
        Err(yaml)
            if yaml.to_string().starts_with("EOF while parsing a value")
                || yaml.to_string().starts_with("invalid value: string \"\"") => {}
        other => panic!("{e:?} for a text serde_yaml reads as {other:?}\n--- text ---\n{text:?}"),
    }
}

/// Checks what `Config`'s docs promise of an accepted config.
pub fn check_accepted(config: &Config) {
    assert_eq!(config.source, ConfigSource::File(FILE.into()));
    assert!(!config.listeners.is_empty() && !config.routes.is_empty());
    for (i, l) in config.listeners.iter().enumerate() {
        assert!(
            config.listeners[..i].iter().all(|m| m.address != l.address),
            "listener {} twice",
            l.address
        );
        if let Some(name) = &l.default_route {
            assert!(config.route(name).is_some(), "default route {name}");
        }
    }
    if let Some(name) = &config.default_route {
        assert!(config.route(name).is_some(), "default route {name}");
    }
    let t = &config.timeouts;
    for d in [t.client_hello, t.connect, t.idle, t.drain] {
        assert!(!d.is_zero() && d <= config::MAX_DURATION, "{t:?}");
    }
    let l = &config.limits;
    assert!(l.max_connections >= 1 && l.max_pending_hellos >= 1);
    assert!(l.max_pending_hellos_per_source >= 1);
    assert!(l.max_connections_per_source != Some(0));
    assert!((MIN_CLIENT_HELLO_BYTES..=MAX_CLIENT_HELLO_BYTES).contains(&l.max_client_hello_bytes));
    for (i, r) in config.routes.iter().enumerate() {
        assert!(
            (1..=63).contains(&r.name.len())
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b)),
            "route name {:?}",
            r.name
        );
        assert!(
            config.routes[..i].iter().all(|o| o.name != r.name),
            "route {} twice",
            r.name
        );
        assert!(
            r.upstreams.is_empty() == r.marathon_app.is_some(),
            "route {}: upstreams {:?}, marathon_app {:?}",
            r.name,
            r.upstreams,
            r.marathon_app
        );
        let is_default = config.default_route.as_deref() == Some(r.name.as_str())
            || config
                .listeners
                .iter()
                .any(|l| l.default_route.as_deref() == Some(r.name.as_str()));
        assert!(
            !r.server_names.is_empty() || is_default,
            "route {} unreachable",
            r.name
        );
        for (j, n) in r.server_names.iter().enumerate() {
            let claimed = config
                .routes
                .iter()
                .take(i)
                .any(|o| o.server_names.contains(n))
                || r.server_names[..j].contains(n);
            assert!(!claimed, "server name {n} twice");
        }
        if let Some(h) = &r.health_check {
            assert!(h.timeout <= h.interval && !h.timeout.is_zero(), "{h:?}");
            assert!(h.healthy_after >= 1 && h.unhealthy_after >= 1, "{h:?}");
        }
    }
    assert!(!config::render(config).is_empty());
}

/// Which characters end a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breaks {
    /// libyaml (serde_yaml's positions): `\n`, `\r\n`, `\r`, U+0085,
    /// U+2028, U+2029.
    Yaml11,
    /// saphyr-parser (the position index's): `\n`, `\r\n`, `\r`.
    Yaml12,
}

/// The lines of `text`, each as its characters (without the break); a text
/// ending in a break has an empty last line.
pub fn lines(text: &str, breaks: Breaks) -> Vec<Vec<char>> {
    let mut out = vec![Vec::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let is_break = match c {
            '\n' => true,
            '\r' => {
                chars.next_if_eq(&'\n');
                true
            }
            '\u{85}' | '\u{2028}' | '\u{2029}' => breaks == Breaks::Yaml11,
            _ => false,
        };
        if is_break {
            out.push(Vec::new());
        } else {
            out.last_mut().expect("never empty").push(c);
        }
    }
    out
}

/// Whether `line`:`column` (from 1) is a character of `lines`, or just past
/// the end of one, or the start of the line after a last line without a
/// line break (libyaml's position for the end of such a text).
pub fn within(lines: &[Vec<char>], line: usize, column: usize) -> bool {
    let end_of_text =
        line == lines.len() + 1 && column == 1 && lines.last().is_some_and(|l| !l.is_empty());
    end_of_text
        || (line >= 1 && column >= 1 && lines.get(line - 1).is_some_and(|l| column <= l.len() + 1))
}

/// The character at `line`:`column` (from 1), if there is one.
pub fn char_at(text: &str, line: usize, column: usize, breaks: Breaks) -> Option<char> {
    lines(text, breaks)
        .get(line.checked_sub(1)?)?
        .get(column.checked_sub(1)?)
        .copied()
}

/// Whether libyaml reads `c` (YAML 1.1's `c-printable`, plus the byte order
/// mark it allows anywhere).
pub fn yaml11_printable(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | '\u{20}'..='\u{7e}' | '\u{85}' | '\u{a0}'..='\u{d7ff}'
        | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
}
