//! Mesos' RecordIO framing, read incrementally: bytes go in as they
//! arrive, split anywhere; whole records come out.
//!
//! A record is its length in bytes as ASCII decimal digits, a `\n`, then
//! exactly that many bytes (for the operator API's `SUBSCRIBE` stream, one
//! JSON-encoded `Event`): `12\n{"type":"X"}`. Nothing separates records.
//!
//! Limits: a length of more than 20 digits, a character other than a digit
//! before the `\n`, an empty length, or a length over the decoder's limit is
//! an error; the stream cannot be read on after one (the framing is lost),
//! so the caller drops it and subscribes again.

use std::fmt;

/// The longest length prefix read (`u64::MAX` has 20 digits).
const MAX_DIGITS: usize = 20;

/// The incremental decoder.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    /// The largest record accepted.
    limit: usize,
}

#[derive(Debug)]
enum State {
    /// Reading the digits of a length.
    Length(Vec<u8>),
    /// Reading a record's bytes: what is read so far, and its length.
    Record(Vec<u8>, usize),
    /// An error was returned: nothing more is decoded.
    Broken,
}

/// Why the stream cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Error {
    /// A byte other than a digit in a length prefix (shown escaped).
    NotALength(String),
    /// A `\n` with no digit before it.
    EmptyLength,
    /// A length prefix of more than 20 digits.
    LengthTooLong,
    /// A record longer than the limit (its length, the limit).
    TooLarge(u64, usize),
    /// The decoder already failed.
    Broken,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotALength(s) => write!(
                f,
                "RecordIO: expected a record length (decimal digits, then a newline), found `{s}`"
            ),
            Self::EmptyLength => f.write_str("RecordIO: a record length with no digit"),
            Self::LengthTooLong => {
                write!(
                    f,
                    "RecordIO: a record length of more than {MAX_DIGITS} digits"
                )
            }
            Self::TooLarge(n, limit) => write!(
                f,
                "RecordIO: a record of {n} bytes is over the {limit} byte limit"
            ),
            Self::Broken => f.write_str("RecordIO: the stream already failed"),
        }
    }
}

impl Decoder {
    /// A decoder that refuses records over `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            state: State::Length(Vec::new()),
            limit,
        }
    }

    /// Whether the input so far ends between records (nothing partial is
    /// buffered).
    pub(crate) fn at_boundary(&self) -> bool {
        matches!(&self.state, State::Length(d) if d.is_empty())
    }

    /// Reads `bytes`, appending the records they complete to `out`.
    ///
    /// # Errors
    /// On a malformed or oversized length; every later call fails too.
    pub(crate) fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), Error> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Broken => return Err(Error::Broken),
                State::Length(digits) => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    match b {
                        b'0'..=b'9' if digits.len() < MAX_DIGITS => digits.push(b),
                        b'0'..=b'9' => return self.fail(Error::LengthTooLong),
                        b'\n' if digits.is_empty() => return self.fail(Error::EmptyLength),
                        b'\n' => {
                            // At most 20 ASCII digits: parses, unless over u64.
                            let n = std::str::from_utf8(digits)
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok());
                            let Some(n) = n else {
                                return self.fail(Error::LengthTooLong);
                            };
                            if n > self.limit as u64 {
                                return self.fail(Error::TooLarge(n, self.limit));
                            }
                            let n = n as usize;
                            if n == 0 {
                                out.push(Vec::new());
                                digits.clear();
                            } else {
                                self.state = State::Record(Vec::with_capacity(n.min(1 << 20)), n);
                            }
                        }
                        _ => {
                            let mut seen = String::from_utf8_lossy(digits).into_owned();
                            seen.extend(std::ascii::escape_default(b).map(char::from));
                            return self.fail(Error::NotALength(seen));
                        }
                    }
                }
                State::Record(buf, n) => {
                    let take = (*n - buf.len()).min(bytes.len());
                    buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if buf.len() == *n {
                        out.push(std::mem::take(buf));
                        self.state = State::Length(Vec::new());
                    }
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: Error) -> Result<(), Error> {
        self.state = State::Broken;
        Err(e)
    }
}

/// Frames one record (for tests and fakes).
#[cfg(test)]
pub(crate) fn encode(record: &[u8]) -> Vec<u8> {
    let mut out = format!("{}\n", record.len()).into_bytes();
    out.extend_from_slice(record);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Vec<u8>> {
        vec![
            br#"{"type":"SUBSCRIBED"}"#.to_vec(),
            br#"{"type":"HEARTBEAT"}"#.to_vec(),
            Vec::new(),
            "{\"type\":\"TASK_ADDED\",\"name\":\"n\u{e9}\\n\"}"
                .as_bytes()
                .to_vec(),
            b"1234567890\n12\n".to_vec(),
        ]
    }

    fn wire() -> Vec<u8> {
        records().iter().flat_map(|r| encode(r)).collect()
    }

    #[test]
    fn every_split_point_of_a_multi_record_input() {
        let wire = wire();
        for split in 0..=wire.len() {
            let mut d = Decoder::new(1024);
            let mut out = Vec::new();
            d.push(&wire[..split], &mut out).unwrap();
            d.push(&wire[split..], &mut out).unwrap();
            assert_eq!(out, records(), "split at {split}");
            assert!(d.at_boundary());
        }
        // Every pair of split points (three pieces).
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let mut d = Decoder::new(1024);
                let mut out = Vec::new();
                for piece in [&wire[..a], &wire[a..b], &wire[b..]] {
                    d.push(piece, &mut out).unwrap();
                }
                assert_eq!(out, records(), "splits at {a} and {b}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_and_partial_records_wait() {
        let wire = wire();
        let mut d = Decoder::new(1024);
        let mut out = Vec::new();
        for (i, b) in wire.iter().enumerate() {
            d.push(std::slice::from_ref(b), &mut out).unwrap();
            if i + 1 < wire.len() {
                assert!(out.len() < records().len());
            }
        }
        assert_eq!(out, records());
        let mut d = Decoder::new(1024);
        let mut out = Vec::new();
        d.push(b"5\nabc", &mut out).unwrap();
        assert!(out.is_empty() && !d.at_boundary());
        d.push(b"de3", &mut out).unwrap();
        assert_eq!(out, [b"abcde".to_vec()]);
        assert!(!d.at_boundary());
    }

    #[test]
    fn garbage_lengths_are_clear_errors_and_stick() {
        let cases: &[(&[u8], Error)] = &[
            (b"{\"type\"", Error::NotALength("{".into())),
            (b"12 \n", Error::NotALength("12 ".into())),
            (b"1\r\nx", Error::NotALength("1\\r".into())),
            (b"-1\n", Error::NotALength("-".into())),
            (b"\n", Error::EmptyLength),
            (b"123456789012345678901\n", Error::LengthTooLong),
            (b"99999999999999999999\n", Error::LengthTooLong),
            (b"1025\n", Error::TooLarge(1025, 1024)),
            (b"2\nab9999\n", Error::TooLarge(9999, 1024)),
        ];
        for (input, want) in cases {
            let mut d = Decoder::new(1024);
            let mut out = Vec::new();
            assert_eq!(d.push(input, &mut out).as_ref(), Err(want), "{input:?}");
            assert_eq!(d.push(b"2\nok", &mut out), Err(Error::Broken));
            assert!(!want.to_string().is_empty());
        }
        assert_eq!(
            Error::NotALength("1\\r".into()).to_string(),
            "RecordIO: expected a record length (decimal digits, then a newline), found `1\\r`"
        );
        // Exactly at the limit is fine.
        let mut d = Decoder::new(4);
        let mut out = Vec::new();
        d.push(b"4\nabcd", &mut out).unwrap();
        assert_eq!(out, [b"abcd".to_vec()]);
    }
}
