//! Heap buffers for the copy fallback, lent per burst like the pipes.
//!
//! A direction holds a [`Buf`] only while bytes flow; an idle tunnel holds
//! none. Buffers are reused through a small bounded process-wide list, so a
//! busy proxy does not allocate per burst.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

/// Size of one copy buffer (the kernel's default pipe size, so both modes
/// move data in similar chunks).
pub(crate) const BUF_SIZE: usize = 64 * 1024;

/// At most this many idle buffers are kept (4 MiB).
const MAX_SPARE: usize = 64;

static SPARE: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// One lent buffer; goes back to the spare list when dropped.
///
/// A reused buffer still holds old bytes, but only `[pos..len]` of a fresh
/// read is ever written out, so nothing crosses tunnels.
#[derive(Debug)]
pub(crate) struct Buf(Option<Box<[u8]>>);

impl Buf {
    /// Takes a spare buffer or allocates a zeroed one.
    pub(crate) fn take() -> Self {
        let spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Self(Some(
            spare.unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice()),
        ))
    }
}

impl Deref for Buf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().expect("a buffer is held until dropped")
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0
            .as_deref_mut()
            .expect("a buffer is held until dropped")
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let Some(buf) = self.0.take() else { return };
        let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < MAX_SPARE {
            spare.push(buf);
        }
    }
}
