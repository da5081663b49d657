//! The ALPN protocol list of a ClientHello, kept compact.
//!
//! A hello of up to 16 KiB may carry thousands of one-byte protocol names.
//! One allocation per name would cost tens of bytes each (hundreds of KiB
//! per connection); [`Alpn`] keeps the extension's own validated list
//! (`len, bytes, len, bytes, ...`) in a single allocation and walks it.

use std::fmt;

/// ALPN protocol names in the client's order; empty without ALPN.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Alpn {
    /// The `ProtocolNameList` body: each name behind its one-byte length,
    /// every length at least 1 (checked by [`Alpn::from_wire`]).
    wire: Box<[u8]>,
}

impl Alpn {
    /// The list from the extension's `ProtocolNameList` body (without its
    /// two-byte length); `None` unless it is a non-empty run of non-empty,
    /// length-prefixed names.
    pub(crate) fn from_wire(mut list: &[u8]) -> Option<Self> {
        let wire = list;
        if list.is_empty() {
            return None;
        }
        while let Some((&len, rest)) = list.split_first() {
            let len = usize::from(len);
            if len == 0 || rest.len() < len {
                return None;
            }
            list = &rest[len..];
        }
        Some(Self { wire: wire.into() })
    }

    /// Builds a list from names (for tests and tools); names that are empty
    /// or longer than 255 bytes are left out, as the wire cannot carry them.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut wire = Vec::new();
        for name in names {
            if let Ok(len) = u8::try_from(name.len()) {
                if len > 0 {
                    wire.push(len);
                    wire.extend_from_slice(name);
                }
            }
        }
        Self { wire: wire.into() }
    }

    /// The names, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.wire }
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether the client sent no ALPN.
    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }

    /// The names as owned vectors.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// The names as text (invalid UTF-8 replaced), comma-separated, for
    /// logs: at most `max_names` names and about `max_bytes` bytes; a cut
    /// list ends in `,...(+N more)`.
    pub fn display_capped(&self, max_names: usize, max_bytes: usize) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_capped(&mut out, max_names, max_bytes);
        out
    }

    /// Writes what [`Alpn::display_capped`] returns to `out`, so that a
    /// caller can size its buffer first (with a writer that only counts)
    /// and then fill it, without a temporary `String`.
    ///
    /// # Errors
    ///
    /// Only those of `out`.
    pub fn write_capped(
        &self,
        out: &mut impl fmt::Write,
        max_names: usize,
        max_bytes: usize,
    ) -> fmt::Result {
        let mut names = self.iter();
        let (mut shown, mut written) = (0, 0);
        while let Some(name) = names.next() {
            let text = String::from_utf8_lossy(name);
            if shown == max_names || written + text.len() + 1 > max_bytes {
                // This name and the ones after it are only counted.
                if shown > 0 {
                    out.write_char(',')?;
                }
                return write!(out, "...(+{} more)", 1 + names.count());
            }
            if shown > 0 {
                out.write_char(',')?;
                written += 1;
            }
            out.write_str(&text)?;
            written += text.len();
            shown += 1;
        }
        Ok(())
    }
}

impl fmt::Debug for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

impl<'a> IntoIterator for &'a Alpn {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The names of an [`Alpn`] list.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.rest.split_first()?;
        // Checked in `from_wire`; a list built by `from_names` holds only
        // what it wrote.
        let (name, rest) = rest.split_at_checked(usize::from(len))?;
        self.rest = rest;
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_lists_are_checked_and_walked() {
        let a = Alpn::from_wire(b"\x02h2\x08http/1.1").unwrap();
        assert_eq!(a.to_vecs(), [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(a.len(), 2);
        assert!(!a.is_empty());
        assert_eq!(format!("{a:?}"), r#"["h2", "http/1.1"]"#);
        assert_eq!(a, Alpn::from_names([&b"h2"[..], b"http/1.1"]));
        for bad in [&b""[..], b"\x00", b"\x03h2", b"\x02h2\x00"] {
            assert_eq!(Alpn::from_wire(bad), None, "{bad:?}");
        }
        assert!(Alpn::default().is_empty());
    }

    #[test]
    fn display_is_capped_with_a_marker() {
        let a = Alpn::from_names([&b"h2"[..], b"http/1.1"]);
        assert_eq!(a.display_capped(16, 256), "h2,http/1.1");
        let many: Vec<[u8; 1]> = (0..7900u32).map(|i| [b'a' + (i % 26) as u8]).collect();
        let many = Alpn::from_names(many.iter().map(|n| &n[..]));
        let text = many.display_capped(16, 256);
        assert_eq!(text, "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,...(+7884 more)");
        let long = Alpn::from_names([&[b'x'; 200][..], &[b'y'; 200][..]]);
        let text = long.display_capped(16, 256);
        assert!(
            text.starts_with("xxx") && text.ends_with(",...(+1 more)"),
            "{text}"
        );
        assert!(text.len() < 256 + 20);
        assert_eq!(
            Alpn::from_names([&[0xff, b'a'][..]]).display_capped(16, 256),
            "\u{fffd}a"
        );
    }

    #[test]
    fn write_capped_appends_what_display_capped_returns() {
        let many: Vec<[u8; 1]> = (0..40u32).map(|i| [b'a' + (i % 26) as u8]).collect();
        for alpn in [
            Alpn::default(),
            Alpn::from_names([&b"h2"[..], b"http/1.1"]),
            Alpn::from_names(many.iter().map(|n| &n[..])),
            Alpn::from_names([&[0xff, b'a'][..]]),
        ] {
            let mut out = String::from("sni.example");
            alpn.write_capped(&mut out, 16, 256).unwrap();
            assert_eq!(out, format!("sni.example{}", alpn.display_capped(16, 256)));
        }
    }
}
