//! Server-sent events framing (the WHATWG `text/event-stream` format), read
//! incrementally: bytes go in as they arrive, split anywhere; whole events
//! come out.
//!
//! - Lines end with `\n`, `\r\n` or `\r`; an empty line dispatches the
//!   event gathered so far.
//! - `event: NAME` names it (default `message`); every `data:` line adds a
//!   line to its data, joined with `\n` (multi-line data).
//! - Lines starting with `:` are comments: keep-alives, counted and
//!   otherwise ignored. `id:`, `retry:` and unknown fields are ignored.
//! - One space after the colon is dropped.
//! - A line or an event's data over the limit is an error: the stream is
//!   then dropped and opened again.

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    /// The `event:` field, `message` when absent.
    pub(crate) name: String,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// The incremental reader.
#[derive(Debug)]
pub(crate) struct Parser {
    line: Vec<u8>,
    /// A `\r` ended the last line: a `\n` right after it is part of it.
    after_cr: bool,
    name: Option<String>,
    data: Option<String>,
    limit: usize,
    /// Comment lines seen (keep-alives).
    pub(crate) comments: u64,
}

/// Why the stream cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooLarge(pub(crate) usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an event stream line or event is over {} bytes", self.0)
    }
}

impl Parser {
    /// A reader that refuses lines and events over `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            name: None,
            data: None,
            limit,
            comments: 0,
        }
    }

    /// Reads `bytes`, appending the events they complete to `out`.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out)?;
                }
                _ => {
                    if self.line.len() >= self.limit {
                        return Err(TooLarge(self.limit));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        if line.is_empty() {
            let name = self.name.take();
            if let Some(data) = self.data.take() {
                out.push(Event {
                    name: name.unwrap_or_else(|| "message".to_owned()),
                    data,
                });
            }
            return Ok(());
        }
        if line[0] == b':' {
            self.comments += 1;
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.name = Some(value.to_owned()),
            "data" => match &mut self.data {
                None => self.data = Some(value.to_owned()),
                Some(data) => {
                    if data.len() + value.len() + 1 > self.limit {
                        return Err(TooLarge(self.limit));
                    }
                    data.push('\n');
                    data.push_str(value);
                }
            },
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\r\n\
        event: event_stream_attached\r\n\
        data: {\"remoteAddress\":\"10.0.0.1\",\"eventType\":\"event_stream_attached\"}\r\n\
        \r\n\
        :\n\
        event: status_update_event\n\
        data: {\"eventType\":\"status_update_event\",\n\
        data:  \"appId\":\"/prod/web\"}\n\
        id: 7\n\
        retry: 1000\n\
        \n\
        data:no space\r\rdata\n\n";

    fn all(chunks: &[&[u8]]) -> (Vec<Event>, u64) {
        let mut p = Parser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        (out, p.comments)
    }

    fn expected() -> Vec<Event> {
        vec![
            Event {
                name: "event_stream_attached".into(),
                data: "{\"remoteAddress\":\"10.0.0.1\",\"eventType\":\"event_stream_attached\"}"
                    .into(),
            },
            Event {
                name: "status_update_event".into(),
                data: "{\"eventType\":\"status_update_event\",\n \"appId\":\"/prod/web\"}".into(),
            },
            Event {
                name: "message".into(),
                data: "no space".into(),
            },
            Event {
                name: "message".into(),
                data: String::new(),
            },
        ]
    }

    #[test]
    fn events_comments_and_multi_line_data() {
        let (events, comments) = all(&[STREAM.as_bytes()]);
        assert_eq!(events, expected());
        assert_eq!(comments, 2);
    }

    #[test]
    fn records_split_at_every_byte() {
        let bytes = STREAM.as_bytes();
        for split in 0..bytes.len() {
            let (events, _) = all(&[&bytes[..split], &bytes[split..]]);
            assert_eq!(events, expected(), "split at {split}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(all(&singles).0, expected());
    }

    #[test]
    fn only_comments_dispatch_nothing() {
        assert_eq!(all(&[b":\n\n:ping\n\n\n"]), (vec![], 2));
        // An event name without data is not dispatched (the spec's rule).
        assert_eq!(all(&[b"event: x\n\n"]).0, vec![]);
    }

    #[test]
    fn over_long_lines_are_refused() {
        let mut p = Parser::new(16);
        assert_eq!(p.push(&[b'a'; 17], &mut Vec::new()), Err(TooLarge(16)));
        let mut p = Parser::new(16);
        let r = p.push(b"data: 0123456789\ndata: 0123456789\n", &mut Vec::new());
        assert_eq!(r, Err(TooLarge(16)));
    }
}
