//! Exponential backoff between rounds of failed attempts.

use std::time::Duration;

/// Pauses that start at `first` and double up to `cap`.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration) -> Self {
        Backoff { next: first.min(cap), cap }
    }

    /// The pause to take now; the following one is twice as long (at most `cap`).
    pub(crate) fn next_pause(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        let got: Vec<u128> = (0..8).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 160, 200, 200]);
    }
}
