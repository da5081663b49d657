//! The server name exactly as the client sent it, for hellos that [`parse`]
//! refused because of that name ([`Error::InvalidServerName`]: an IP
//! literal, a NUL byte, non-ASCII bytes, a name too long...). The router
//! shows such a name, escaped, in its list of recent refusals, so an
//! operator can see what a client asked for.
//!
//! Best effort and forgiving, unlike [`parse`]: it reads only the first
//! TLS record, skips the checks that do not lead to the name, and answers
//! `None` whenever the bytes do not get it there. It never panics and
//! never allocates.
//!
//! [`parse`]: crate::parse
//! [`Error::InvalidServerName`]: crate::Error::InvalidServerName

/// The first `host_name` of the `server_name` extension in the ClientHello
/// at the start of `bytes`, as sent (not validated, not normalised).
///
/// `None` when `bytes` do not start with a handshake record holding a
/// ClientHello, when the hello has no `server_name` extension, or when the
/// name does not lie whole in the first record (a hello split across
/// records before its name; rare, and then nothing is shown).
pub fn raw_server_name(bytes: &[u8]) -> Option<&[u8]> {
    let mut record = Reader(bytes);
    if record.u8()? != 22 {
        return None; // not a handshake record
    }
    record.take(2)?; // record version
    let len = record.u16()?;
    // The first record's payload, or what arrived of it.
    let payload = record.0.get(..len.min(record.0.len()))?;
    let mut hs = Reader(payload);
    if hs.u8()? != 1 {
        return None; // not a ClientHello
    }
    hs.take(3)?; // handshake length: the record bounds us anyway
    hs.take(2 + 32)?; // legacy_version, random
    hs.vec8()?; // legacy_session_id
    hs.vec16()?; // cipher_suites
    hs.vec8()?; // legacy_compression_methods
    let mut exts = Reader(hs.vec16_or_rest()?);
    while !exts.0.is_empty() {
        let ext_type = exts.u16()?;
        let data = exts.vec16()?;
        if ext_type != 0 {
            continue;
        }
        let mut list = Reader(data);
        let mut names = Reader(list.vec16_or_rest()?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == 0 {
                return Some(name);
            }
        }
        return None;
    }
    None
}

/// A cursor over bytes whose every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }

    /// A vector with a two-byte length, cut to the bytes there are: a
    /// block's own length may be wrong while the entries in it are whole.
    fn vec16_or_rest(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?.min(self.0.len());
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::raw_server_name;
    use crate::synth::{records, HelloBuilder};
    use crate::{parse, Error, Limits};

    fn raw(name: &[u8]) -> Vec<u8> {
        HelloBuilder::new("").raw_server_name(name).build()
    }

    #[test]
    fn returns_the_name_as_sent() {
        let hello = HelloBuilder::new("API.Example.COM.").build();
        assert_eq!(raw_server_name(&hello), Some(&b"API.Example.COM."[..]));
    }

    /// The names `parse` refuses are exactly the ones this is for.
    #[test]
    fn returns_names_parse_refuses() {
        let long = vec![b'a'; 300];
        let cases: [&[u8]; 6] = [
            b"192.0.2.1",
            b"[2001:db8::1]",
            b"evil\0.example.com",
            "bücher.example".as_bytes(),
            b"<script>alert(1)</script>",
            &long,
        ];
        for name in cases {
            let hello = raw(name);
            assert!(
                matches!(
                    parse(&hello, &Limits::default()),
                    Err(Error::InvalidServerName(_))
                ),
                "{name:?} should be an invalid name"
            );
            assert_eq!(raw_server_name(&hello), Some(name), "{name:?}");
        }
    }

    #[test]
    fn first_host_name_of_several() {
        let hello = HelloBuilder::new("")
            .server_names(&[b"one.example", b"two.example"])
            .build();
        assert_eq!(raw_server_name(&hello), Some(&b"one.example"[..]));
    }

    #[test]
    fn none_without_a_name() {
        assert_eq!(
            raw_server_name(&HelloBuilder::new("x").no_sni().build()),
            None
        );
        assert_eq!(raw_server_name(b""), None);
        assert_eq!(raw_server_name(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(raw_server_name(&[21, 3, 3, 0, 2, 2, 40]), None);
        // A handshake record holding another handshake message.
        let mut hs = HelloBuilder::new("a.example").handshake();
        hs[0] = 2;
        assert_eq!(raw_server_name(&records(&hs, 1 << 14, 0x0301)), None);
    }

    /// Any prefix: the name once it is all there, `None` before; never a
    /// panic or a piece of a name.
    #[test]
    fn prefixes_give_the_whole_name_or_none() {
        let hello = raw(b"10.0.0.1");
        let mut first = None;
        for n in 0..=hello.len() {
            match raw_server_name(&hello[..n]) {
                Some(name) => {
                    assert_eq!(name, b"10.0.0.1");
                    first.get_or_insert(n);
                }
                None => assert!(first.is_none(), "lost the name at {n} bytes"),
            }
        }
        assert!(first.is_some());
    }

    #[test]
    fn name_in_the_first_record_only() {
        let builder = HelloBuilder::new("").raw_server_name(b"198.51.100.7");
        assert_eq!(
            raw_server_name(&builder.build_in_records(200)),
            Some(&b"198.51.100.7"[..])
        );
        // Split before the name: not reassembled.
        assert_eq!(raw_server_name(&builder.build_in_records(50)), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let hello = raw(b"x\xff\x00y");
        // A small xorshift: every byte of the hello flipped to many values,
        // and random buffers with a plausible start.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..hello.len() {
            for _ in 0..8 {
                let mut bytes = hello.clone();
                bytes[i] = next() as u8;
                let _ = raw_server_name(&bytes);
            }
        }
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(b) = bytes.first_mut() {
                *b = 22;
            }
            if let Some(b) = bytes.get_mut(5) {
                *b = 1;
            }
            if let Some(name) = raw_server_name(&bytes) {
                assert!(name.len() <= bytes.len());
            }
        }
    }
}
