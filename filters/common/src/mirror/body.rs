//! Copying a request (or response) body chunk by chunk while the primary streams on, with a
//! size cap and the worker's byte budget.

use super::queue::ByteBudget;

/// Why a body copy was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// The body is larger than the policy's `maxBodyBytes`.
    TooLarge,
    /// The worker's buffer budget is exhausted.
    OverBudget,
}

/// A body being copied. Bytes held are reserved in a [`ByteBudget`]; give them back with
/// [`BodyCopy::release`] (or by taking the body with [`BodyCopy::finish`] and releasing its
/// length later).
#[derive(Debug, Default)]
pub struct BodyCopy {
    buf: Vec<u8>,
    limit: usize,
    failed: Option<CopyError>,
}

impl BodyCopy {
    /// An empty copy that accepts at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            failed: None,
        }
    }

    /// Appends a chunk. On failure the copy frees what it held and stays failed; the error is
    /// reported once (later calls return `Ok`), so each copy is counted once.
    pub fn push(&mut self, chunk: &[u8], budget: &mut ByteBudget) -> Result<(), CopyError> {
        if self.failed.is_some() || chunk.is_empty() {
            return Ok(());
        }
        let err = if self.buf.len().saturating_add(chunk.len()) > self.limit {
            Some(CopyError::TooLarge)
        } else if !budget.try_reserve(chunk.len()) {
            Some(CopyError::OverBudget)
        } else {
            None
        };
        match err {
            Some(e) => {
                self.release(budget);
                self.failed = Some(e);
                Err(e)
            }
            None => {
                self.buf.extend_from_slice(chunk);
                Ok(())
            }
        }
    }

    /// Whether the copy was given up.
    pub fn failed(&self) -> Option<CopyError> {
        self.failed
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Frees the bytes held and their reservation.
    pub fn release(&mut self, budget: &mut ByteBudget) {
        budget.release(self.buf.len());
        self.buf = Vec::new();
    }

    /// The complete body (its bytes stay reserved; the caller releases `len()` later), or
    /// `None` if the copy failed.
    pub fn finish(self) -> Option<Vec<u8>> {
        match self.failed {
            Some(_) => None,
            None => Some(self.buf),
        }
    }
}

/// Whether a declared `content-length` already exceeds `limit` (so no copying is started).
/// A missing or malformed value is not "too large": the chunks decide.
pub fn declared_too_large(content_length: Option<&[u8]>, limit: usize) -> bool {
    content_length
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_up_to_the_limit() {
        let mut budget = ByteBudget::new(1_000);
        let mut c = BodyCopy::new(10);
        assert!(c.push(b"hello", &mut budget).is_ok());
        assert!(c.push(b"world", &mut budget).is_ok());
        assert_eq!(budget.used(), 10);
        assert_eq!(c.finish().unwrap(), b"helloworld");
    }

    #[test]
    fn one_byte_over_the_limit_gives_up_and_frees() {
        let mut budget = ByteBudget::new(1_000);
        let mut c = BodyCopy::new(10);
        c.push(b"helloworld", &mut budget).unwrap();
        assert_eq!(c.push(b"!", &mut budget), Err(CopyError::TooLarge));
        assert_eq!(budget.used(), 0);
        assert!(c.push(b"more", &mut budget).is_ok(), "reported once");
        assert_eq!(c.failed(), Some(CopyError::TooLarge));
        assert!(c.finish().is_none());
    }

    #[test]
    fn exhausted_budget_gives_up() {
        let mut budget = ByteBudget::new(8);
        let mut c = BodyCopy::new(100);
        c.push(b"12345", &mut budget).unwrap();
        assert_eq!(c.push(b"6789", &mut budget), Err(CopyError::OverBudget));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn declared_length_is_checked_leniently() {
        assert!(declared_too_large(Some(b"11"), 10));
        assert!(!declared_too_large(Some(b"10"), 10));
        assert!(!declared_too_large(Some(b"abc"), 10));
        assert!(!declared_too_large(None, 10));
    }
}
