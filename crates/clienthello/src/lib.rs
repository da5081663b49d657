//! Placeholder while the parser is written.
#![forbid(unsafe_code)]
mod name;
pub use name::{NameError, ServerName, MAX_LABEL_LEN, MAX_NAME_LEN};
