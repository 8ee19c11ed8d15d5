//! Why v4 bytes were refused.

/// Why v4 bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V4Error {
    #[error("truncated: {0} runs past the end")]
    Truncated(&'static str),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("a frame of {size} bytes is over the limit of {max}")]
    TooLarge { size: u64, max: usize },
    #[error("{0}")]
    Crypto(String),
}
