//! Where each node of a YAML document is: a second, position-only parse of
//! the config text, used to point validation errors (found after serde has
//! produced plain values without positions) at the offending node.
//!
//! serde_yaml exposes positions only for its own errors. Rather than write
//! a span-tracking serde deserializer, the text is walked once more with
//! saphyr-parser's event stream, whose events carry their marks, into a
//! small tree of positions. The tree is consulted only when an error is
//! reported; if the two parsers ever disagreed on a document, the error
//! would lose its position, never its message.

use saphyr_parser::{Event, Parser, Span};

use super::error::{Path, Seg};

/// Deeper documents are not indexed. serde_yaml refuses nesting beyond 128
/// levels before any lookup could be needed; this only bounds the work.
const MAX_DEPTH: usize = 256;

/// A line and column, both counted from 1 (columns in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Pos {
    fn of(span: &Span) -> Self {
        Self {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }

    pub(crate) fn pair(self) -> (usize, usize) {
        (self.line, self.column)
    }
}

#[derive(Debug)]
struct Node {
    pos: Pos,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An alias (`*name`); its target is not followed.
    Alias,
}

/// Which part of a mapping entry to point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum At {
    /// The value (or the sequence item) at the path.
    Value,
    /// The key of the last step of the path (falls back to the value).
    Key,
}

/// Positions of the nodes of the first document of a YAML text.
#[derive(Debug)]
pub(crate) struct SourceMap {
    root: Option<Node>,
    /// Where a second document starts, if the text has one.
    second_document: Option<Pos>,
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

impl SourceMap {
    /// Indexes `text`; `None` if it is not YAML this parser accepts or is
    /// nested too deeply.
    pub(crate) fn build(text: &str) -> Option<Self> {
        // A bug in the parser must not take the router down over an error
        // message: positions are a nicety, so a panic only loses them.
        std::panic::catch_unwind(|| Self::build_inner(text))
            .ok()
            .flatten()
    }

    fn build_inner(text: &str) -> Option<Self> {
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        let mut root = None;
        let mut documents = 0usize;
        let mut second_document = None;
        while let Some(event) = parser.next_event() {
            let (event, span) = event.ok()?;
            let node = match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        second_document = Some(Pos::of(&span));
                        break;
                    }
                    continue;
                }
                Event::StreamEnd => break,
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    if stack.len() >= MAX_DEPTH {
                        return None;
                    }
                    let pos = Pos::of(&span);
                    stack.push(if matches!(event, Event::SequenceStart(..)) {
                        Frame::Seq(pos, Vec::new())
                    } else {
                        Frame::Map(pos, Vec::new(), None)
                    });
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => match stack.pop()? {
                    Frame::Seq(pos, items) => Node {
                        pos,
                        kind: Kind::Seq(items),
                    },
                    Frame::Map(pos, entries, _) => Node {
                        pos,
                        kind: Kind::Map(entries),
                    },
                },
                Event::Scalar(value, ..) => Node {
                    pos: Pos::of(&span),
                    kind: Kind::Scalar(value.into_owned()),
                },
                Event::Alias(_) => Node {
                    pos: Pos::of(&span),
                    kind: Kind::Alias,
                },
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            };
            match stack.last_mut() {
                None => {
                    if root.is_none() {
                        root = Some(node);
                    }
                }
                Some(Frame::Seq(_, items)) => items.push(node),
                Some(Frame::Map(_, entries, pending)) => match pending.take() {
                    None => *pending = Some(node),
                    Some(key) => entries.push((key, node)),
                },
            }
        }
        Some(Self {
            root,
            second_document,
        })
    }

    /// Whether the document has no content: nothing but comments, or a
    /// lone null.
    pub(crate) fn is_empty_document(&self) -> bool {
        match &self.root {
            None => true,
            Some(Node {
                kind: Kind::Scalar(s),
                ..
            }) => matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"),
            Some(_) => false,
        }
    }

    /// Where the second document of a multi-document text starts.
    pub(crate) fn second_document(&self) -> Option<Pos> {
        self.second_document
    }

    /// The position of the node at `path`. When the path leads somewhere
    /// the document does not have, the deepest node found on the way.
    pub(crate) fn locate(&self, path: &Path, at: At) -> Option<Pos> {
        let mut node = self.root.as_ref()?;
        let mut key_pos = None;
        for seg in &path.0 {
            key_pos = None;
            let next = match (seg, &node.kind) {
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i),
                (Seg::Key(k), Kind::Map(entries)) => entries
                    .iter()
                    .find(|(key, _)| matches!(&key.kind, Kind::Scalar(s) if s == k))
                    .map(|(key, value)| {
                        key_pos = Some(key.pos);
                        value
                    }),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return Some(node.pos),
            }
        }
        match at {
            At::Key => Some(key_pos.unwrap_or(node.pos)),
            At::Value => Some(node.pos),
        }
    }

    /// The position of the second occurrence of `key` in the mapping at
    /// `path` (serde only says that a key was repeated).
    pub(crate) fn duplicate_key(&self, path: &Path, key: &str) -> Option<Pos> {
        let mut node = self.root.as_ref()?;
        for seg in &path.0 {
            node = match (seg, &node.kind) {
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                (Seg::Key(k), Kind::Map(entries)) => entries
                    .iter()
                    .find(|(kn, _)| matches!(&kn.kind, Kind::Scalar(s) if s == k))
                    .map(|(_, v)| v)?,
                _ => return None,
            };
        }
        let Kind::Map(entries) = &node.kind else {
            return None;
        };
        entries
            .iter()
            .filter(|(kn, _)| matches!(&kn.kind, Kind::Scalar(s) if s == key))
            .nth(1)
            .map(|(kn, _)| kn.pos)
    }
}

/// The message of the errors [`locate_by_libyaml`] provokes.
const FOUND: &str = "found";

/// The position of the node at `path` (or of its key, for [`At::Key`]) as
/// serde_yaml's parser, libyaml, sees it; when the path leads somewhere the
/// document does not have, the deepest node found on the way.
///
/// The fallback for texts the index cannot read: saphyr-parser follows YAML
/// 1.2 and libyaml YAML 1.1, so a document one accepts the other may refuse
/// (a byte order mark inside a comment, a directive without `...` before
/// it). serde_yaml gives positions only in errors, so this walks the path
/// with a deserializer that fails, on purpose, at the node it looks for.
pub(crate) fn locate_by_libyaml(text: &str, path: &Path, at: At) -> Option<Pos> {
    let de = serde_yaml::Deserializer::from_str(text);
    let error = serde::de::DeserializeSeed::deserialize(Seek { rest: &path.0, at }, de).err()?;
    let loc = error.location()?;
    Some(Pos {
        line: loc.line(),
        column: loc.column(),
    })
}

/// Where libyaml sees the second document of `text` begin: the position of
/// its first node, or of the syntax error it ends in.
pub(crate) fn second_document_by_libyaml(text: &str) -> Option<Pos> {
    let second = serde_yaml::Deserializer::from_str(text).nth(1)?;
    let error = serde::de::DeserializeSeed::deserialize(
        Seek {
            rest: &[],
            at: At::Value,
        },
        second,
    )
    .err()?;
    let loc = error.location()?;
    Some(Pos {
        line: loc.line(),
        column: loc.column(),
    })
}

/// Follows `rest` into a node and fails at its end (see
/// [`locate_by_libyaml`]): serde_yaml puts the position of the node being
/// read into an error that a visitor returns.
struct Seek<'p> {
    rest: &'p [Seg],
    at: At,
}

impl<'de> serde::de::DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(FOUND)
    }

    // Scalars, and any node where the path ends: the error is the answer.
    // (The other visit_* methods fail the same way by default.)
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let Some((Seg::Key(want), rest)) = self.rest.split_first() else {
            return Err(A::Error::custom(FOUND));
        };
        let fail_at_key = rest.is_empty() && self.at == At::Key;
        while let Some(found) = map.next_key_seed(Key { want, fail_at_key })? {
            if found {
                return map.next_value_seed(Seek { rest, at: self.at });
            }
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Err(A::Error::custom(FOUND))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let Some((Seg::Index(want), rest)) = self.rest.split_first() else {
            return Err(A::Error::custom(FOUND));
        };
        for _ in 0..*want {
            if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                return Err(A::Error::custom(FOUND));
            }
        }
        match seq.next_element_seed(Seek { rest, at: self.at })? {
            Some(()) => Ok(()),
            None => Err(A::Error::custom(FOUND)),
        }
    }
}

/// A mapping key: whether it is `want` (failing there for [`At::Key`]).
struct Key<'k> {
    want: &'k str,
    fail_at_key: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        match v == self.want {
            true if self.fail_at_key => Err(E::custom(FOUND)),
            found => Ok(found),
        }
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segs: &[Seg]) -> Path {
        Path(segs.to_vec())
    }

    fn key(k: &str) -> Seg {
        Seg::Key(k.to_owned())
    }

    #[test]
    fn positions_in_block_and_flow_style() {
        let text = "listeners: [\"a\", 'b']\nroutes:\n  - name: x\n    server_names:\n      - foo\n      - \"bar\"\n  - {name: y, upstreams: [1]}\n";
        let map = SourceMap::build(text).unwrap();
        let at = |segs: &[Seg], at| map.locate(&path(segs), at).map(Pos::pair);
        assert_eq!(
            at(&[key("listeners"), Seg::Index(1)], At::Value),
            Some((1, 18))
        );
        assert_eq!(at(&[key("listeners")], At::Key), Some((1, 1)));
        assert_eq!(at(&[key("routes"), Seg::Index(0)], At::Value), Some((3, 5)));
        assert_eq!(
            at(
                &[
                    key("routes"),
                    Seg::Index(0),
                    key("server_names"),
                    Seg::Index(1)
                ],
                At::Value
            ),
            Some((6, 9))
        );
        assert_eq!(
            at(
                &[
                    key("routes"),
                    Seg::Index(1),
                    key("upstreams"),
                    Seg::Index(0)
                ],
                At::Value
            ),
            Some((7, 27))
        );
        assert_eq!(
            at(&[key("routes"), Seg::Index(1), key("upstreams")], At::Key),
            Some((7, 15))
        );
        // A path past the document's end: the deepest node found.
        assert_eq!(
            at(
                &[key("routes"), Seg::Index(1), key("nope"), Seg::Index(3)],
                At::Value
            ),
            Some((7, 5))
        );
        assert!(!map.is_empty_document());
    }

    #[test]
    fn duplicates_documents_and_emptiness() {
        let map = SourceMap::build("a: 1\nb:\n  c: 1\n  c: 2\n---\nx: 1\n").unwrap();
        assert_eq!(
            map.duplicate_key(&path(&[key("b")]), "c").map(Pos::pair),
            Some((4, 3))
        );
        assert_eq!(map.duplicate_key(&path(&[]), "a"), None);
        assert_eq!(map.second_document().map(Pos::pair), Some((5, 1)));
        for empty in ["", "# nothing\n", "~\n", "---\n...\n"] {
            assert!(
                SourceMap::build(empty).unwrap().is_empty_document(),
                "{empty:?}"
            );
        }
        assert!(SourceMap::build("a: [").is_none());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(SourceMap::build(&deep).is_none());
    }
}
