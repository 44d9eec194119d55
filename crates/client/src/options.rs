//! [`ClientOptions`]: the client's timeouts and request size.

use std::time::Duration;

use crate::BLOCK_SIZE;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Overall deadline of one call (a volume read/write or one [`crate::Client::request`]),
    /// retries included. Default 30 s.
    pub op_timeout: Duration,
    /// Deadline of one attempt at one OSD (dial, send, answer). Default 2 s.
    pub attempt_timeout: Duration,
    /// Largest read or write payload of one request; larger ranges are split. Rounded down
    /// to a multiple of 4096 (at least 4096) and capped at the wire's `MAX_DATA`.
    /// Default 1 MiB.
    pub max_request_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { op_timeout: Duration::from_secs(30), attempt_timeout: Duration::from_secs(2), max_request_bytes: 1 << 20 }
    }
}

impl ClientOptions {
    /// `max_request_bytes` as actually used: a multiple of 4096 in `4096..=MAX_DATA`.
    pub fn request_bytes(&self) -> u64 {
        let max = (self.max_request_bytes as u64).min(u64::from(tessera_wire::msg::MAX_DATA));
        (max / BLOCK_SIZE * BLOCK_SIZE).max(BLOCK_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_is_a_block_multiple_within_the_wire_limit() {
        let with = |n| ClientOptions { max_request_bytes: n, ..Default::default() }.request_bytes();
        assert_eq!(with(1 << 20), 1 << 20);
        assert_eq!(with(0), 4096);
        assert_eq!(with(10_000), 8192);
        assert_eq!(with(usize::MAX), u64::from(tessera_wire::msg::MAX_DATA));
    }
}
