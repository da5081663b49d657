//! [`ConfigError`] and the paths (`routes[1].server_names[0]`) it names.

use std::fmt;

/// One step of a path into the config document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from the document root to a node, shown as
/// `routes[1].server_names[0]` (a key that is empty or holds other than
/// letters, digits, `_` and `-` in quotes: `routes[0]."a.b"`); the root is
/// the empty path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Path(pub(crate) Vec<Seg>);

impl Path {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    /// This path with a key appended.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_owned()));
        p
    }

    /// This path with an index appended.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(index));
        p
    }

    /// The path serde_path_to_error tracked, up to the first step it could
    /// not name.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut segs = Vec::new();
        for seg in path.iter() {
            match seg {
                Segment::Seq { index } => segs.push(Seg::Index(*index)),
                Segment::Map { key } => segs.push(Seg::Key(key.clone())),
                Segment::Enum { .. } => {}
                Segment::Unknown => break,
            }
        }
        Self(segs)
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as serde_yaml writes it in its messages: keys unquoted.
    pub(crate) fn serde_yaml_form(&self) -> String {
        let mut out = String::new();
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => out.push_str(k),
                Seg::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Seg::Index(n) => out.push_str(&format!("[{n}]")),
            }
        }
        out
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    // A key that is empty or could be read as more than one
                    // step (`a.b`, `a[0]`) is quoted.
                    let plain = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
                    if plain {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Why a config could not be loaded, with where in the file.
///
/// Displays as `FILE:LINE:COLUMN: message (at PATH)`, e.g.
/// `sniroute.yaml:12:9: invalid server name ... (at routes[1].server_names[0])`;
/// `FILE: message` when no position is known (I/O errors, an empty file).
/// Lines and columns count from 1, columns in characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    file: String,
    position: Option<(usize, usize)>,
    path: Option<String>,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(
        file: &str,
        position: Option<(usize, usize)>,
        path: &Path,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_owned(),
            position,
            path: (!path.is_root()).then(|| path.to_string()),
            message: message.into(),
        }
    }

    /// An error about the file as a whole (I/O, encoding, emptiness).
    pub(crate) fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            position: None,
            path: None,
            message: message.into(),
        }
    }

    /// An error about `source` as a whole, before any YAML is read (for
    /// example: a config URL could not be fetched).
    pub fn about_source(source: &crate::ConfigSource, message: impl Into<String>) -> Self {
        Self::whole_file(&source.display_name(), message)
    }

    /// The file name, or `$SNIROUTE_CONFIG_YAML` for YAML from the
    /// environment.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line (from 1) of the offending YAML node, when known.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(l, _)| l)
    }

    /// The column (from 1, in characters) of the offending YAML node, when
    /// known.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, c)| c)
    }

    /// The path of the offending node (`routes[1].server_names[0]`), when
    /// the error concerns a node below the document root.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// What is wrong, without file or position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(path) = &self.path {
            write!(f, " (at {path})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
