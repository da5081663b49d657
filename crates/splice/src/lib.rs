//! Placeholder: see the splice helper's work.
