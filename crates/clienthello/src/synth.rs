//! Builds ClientHello bytes on purpose: well-formed ones shaped like real
//! clients' (for benchmarks and load tests), and broken ones (for tests of
//! every error path and for hostile-input suites).
//!
//! This is not a TLS client: the random, key share and cipher list are
//! fixed filler. A server would answer it, but nobody can finish the
//! handshake.
//!
//! Behind the cargo feature `synth` (and `cfg(test)`): tests, benches and
//! `fuzz/` enable it; the router's build does not include it.

/// A ClientHello under construction. Start from [`HelloBuilder::new`]
/// (a TLS 1.3-shaped hello with SNI and ALPN `h2`, `http/1.1`) and change
/// what the test needs.
#[derive(Clone, Debug)]
pub struct HelloBuilder {
    server_names: Vec<Vec<u8>>,
    alpn: Vec<Vec<u8>>,
    supported_versions: Vec<u16>,
    ech: bool,
    pad_to: Option<usize>,
    extra: Vec<(u16, Vec<u8>)>,
    record_version: u16,
}

impl Default for HelloBuilder {
    fn default() -> Self {
        Self::new("example.com")
    }
}

impl HelloBuilder {
    /// A TLS 1.3-shaped hello for `server_name` (pass `""` with
    /// [`HelloBuilder::no_sni`] for none).
    pub fn new(server_name: &str) -> Self {
        Self {
            server_names: vec![server_name.as_bytes().to_vec()],
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            supported_versions: vec![0x0304, 0x0303],
            ech: false,
            pad_to: None,
            extra: Vec::new(),
            record_version: 0x0301,
        }
    }

    /// Sends no `server_name` extension.
    pub fn no_sni(mut self) -> Self {
        self.server_names.clear();
        self
    }

    /// Puts raw bytes (anything, valid or not) as the only host name.
    pub fn raw_server_name(mut self, name: &[u8]) -> Self {
        self.server_names = vec![name.to_vec()];
        self
    }

    /// Puts several host_name entries into one `server_name` extension.
    pub fn server_names(mut self, names: &[&[u8]]) -> Self {
        self.server_names = names.iter().map(|n| n.to_vec()).collect();
        self
    }

    /// Sets the ALPN list (empty: no ALPN extension).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Sets the `supported_versions` list (empty: no such extension).
    pub fn supported_versions(mut self, versions: &[u16]) -> Self {
        self.supported_versions = versions.to_vec();
        self
    }

    /// Adds an `encrypted_client_hello` extension with filler content.
    pub fn ech(mut self) -> Self {
        self.ech = true;
        self
    }

    /// Adds a `padding` extension so that the handshake message is `len`
    /// bytes (browsers' post-quantum hellos are about 1.9 KB).
    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = Some(len);
        self
    }

    /// Appends an extension as given (type, body), after the usual ones.
    pub fn extension(mut self, ext_type: u16, body: &[u8]) -> Self {
        self.extra.push((ext_type, body.to_vec()));
        self
    }

    /// Appends `count` empty extensions of distinct unassigned types.
    pub fn many_extensions(mut self, count: usize) -> Self {
        for i in 0..count {
            // 0x4000.. is not assigned by IANA; wraps past 65535 are fine.
            self.extra
                .push((0x4000u16.wrapping_add(i as u16), Vec::new()));
        }
        self
    }

    /// The handshake message: type, 3-byte length, body.
    pub fn handshake(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(512);
        body.extend_from_slice(&0x0303u16.to_be_bytes()); // legacy_version
        body.extend((0..32u8).map(|i| i.wrapping_mul(37))); // random
        body.push(32); // legacy_session_id
        body.extend((0..32u8).map(|i| i ^ 0x5a));
        let suites: [u16; 5] = [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f];
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]); // compression: null

        let mut exts = Vec::with_capacity(256);
        if !self.server_names.is_empty() {
            let mut list = Vec::new();
            for name in &self.server_names {
                list.push(0); // host_name
                list.extend_from_slice(&(name.len() as u16).to_be_bytes());
                list.extend_from_slice(name);
            }
            let mut sni = (list.len() as u16).to_be_bytes().to_vec();
            sni.extend_from_slice(&list);
            push_ext(&mut exts, 0, &sni);
        }
        push_ext(&mut exts, 10, &[0, 4, 0, 0x1d, 0, 0x17]); // supported_groups
        push_ext(&mut exts, 13, &[0, 4, 4, 3, 8, 4]); // signature_algorithms
        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for p in &self.alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p);
            }
            let mut alpn = (list.len() as u16).to_be_bytes().to_vec();
            alpn.extend_from_slice(&list);
            push_ext(&mut exts, 16, &alpn);
        }
        if !self.supported_versions.is_empty() {
            let mut v = vec![(self.supported_versions.len() * 2) as u8];
            for ver in &self.supported_versions {
                v.extend_from_slice(&ver.to_be_bytes());
            }
            push_ext(&mut exts, 43, &v);
        }
        // key_share: one x25519 share of filler.
        let mut ks = vec![0, 36, 0, 0x1d, 0, 32];
        ks.extend((0..32u8).map(|i| i.wrapping_add(9)));
        push_ext(&mut exts, 51, &ks);
        if self.ech {
            push_ext(&mut exts, 0xfe0d, &[0; 40]);
        }
        for (t, b) in &self.extra {
            push_ext(&mut exts, *t, b);
        }
        if let Some(target) = self.pad_to {
            // handshake = 4 + body + 2 (ext block length) + exts + 4 (padding header) + pad
            let used = 4 + body.len() + 2 + exts.len() + 4;
            let pad = target.saturating_sub(used);
            push_ext(&mut exts, 21, &vec![0; pad]);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);

        let mut hs = Vec::with_capacity(body.len() + 4);
        hs.push(1);
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    /// The hello in one TLS record (records of at most 16384 bytes are
    /// used when the handshake is larger).
    pub fn build(&self) -> Vec<u8> {
        records(&self.handshake(), 1 << 14, self.record_version)
    }

    /// The hello split into records of at most `payload` bytes each.
    pub fn build_in_records(&self, payload: usize) -> Vec<u8> {
        records(&self.handshake(), payload, self.record_version)
    }
}

fn push_ext(out: &mut Vec<u8>, ext_type: u16, body: &[u8]) {
    out.extend_from_slice(&ext_type.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// Wraps handshake bytes into handshake records of at most `payload` bytes
/// (at least 1), with the given record-layer version.
pub fn records(handshake: &[u8], payload: usize, record_version: u16) -> Vec<u8> {
    let payload = payload.max(1);
    let mut out = Vec::with_capacity(handshake.len() + 5 * handshake.len().div_ceil(payload));
    for chunk in handshake.chunks(payload) {
        out.push(22);
        out.extend_from_slice(&record_version.to_be_bytes());
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Takes a well-formed stream of handshake records (such as a capture) and
/// re-splits its handshake bytes into records of at most `payload` bytes,
/// keeping the first record's version. Returns `None` when `stream` is not
/// a sequence of complete handshake records.
pub fn resplit(stream: &[u8], payload: usize) -> Option<Vec<u8>> {
    let mut hs = Vec::with_capacity(stream.len());
    let mut rest = stream;
    let version = u16::from_be_bytes([*stream.get(1)?, *stream.get(2)?]);
    while !rest.is_empty() {
        if rest.len() < 5 || rest[0] != 22 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let payload_bytes = rest.get(5..5 + len)?;
        hs.extend_from_slice(payload_bytes);
        rest = &rest[5 + len..];
    }
    Some(records(&hs, payload, version))
}
