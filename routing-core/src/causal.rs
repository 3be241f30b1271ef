//! Read-your-writes across requests: a token for the primary's WAL position after a write.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the primary's WAL stood after a write, and when: hand it to a later request (in a
/// header or a cookie) and that request's reads go only to replicas that have replayed it.
///
/// Its text form, `<LSN>@<unix milliseconds>` (e.g. `0/16B3748@1764136800000`), is safe for
/// HTTP headers and cookie values; [`FromStr`] reads it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CausalToken {
    lsn: u64,
    written_at_ms: u64,
}

impl CausalToken {
    /// A token for the WAL position `lsn` (as PostgreSQL's `pg_lsn` minus `'0/0'`), written now.
    pub fn new(lsn: u64) -> Self {
        CausalToken {
            lsn,
            written_at_ms: now_ms(),
        }
    }

    /// The WAL position a replica must have replayed.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// When the write happened.
    pub fn written_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.written_at_ms)
    }

    /// How long ago the write happened (zero for a token from the future).
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.written_at_ms))
    }

    /// When the write happened, in milliseconds since the Unix epoch.
    pub(crate) fn written_at_ms(&self) -> u64 {
        self.written_at_ms
    }

    /// The later of two tokens.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        CausalToken {
            lsn: self.lsn.max(other.lsn),
            written_at_ms: self.written_at_ms.max(other.written_at_ms),
        }
    }

    /// The LSN in PostgreSQL's text form, `X/Y`.
    pub(crate) fn lsn_text(&self) -> String {
        format!("{:X}/{:X}", self.lsn >> 32, self.lsn & 0xFFFF_FFFF)
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Display for CausalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.lsn_text(), self.written_at_ms)
    }
}

/// A token that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid causal token {0:?}: expected <LSN as X/Y>@<unix milliseconds>")]
pub struct InvalidToken(String);

impl FromStr for CausalToken {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidToken(s.chars().take(64).collect());
        let (lsn, at) = s.trim().split_once('@').ok_or_else(invalid)?;
        let (hi, lo) = lsn.split_once('/').ok_or_else(invalid)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| invalid())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| invalid())?;
        let written_at_ms = at.parse::<u64>().map_err(|_| invalid())?;
        Ok(CausalToken {
            lsn: (u64::from(hi) << 32) | u64::from(lo),
            written_at_ms,
        })
    }
}

/// How reads that carry a [`CausalToken`] see the write it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadYourWrites {
    /// Only replicas that have replayed the token's WAL position serve the read. When the health
    /// probe does not know one, a replica is asked directly, and asked again for up to `wait`;
    /// then the primary serves the read.
    Lsn {
        /// How long a read may wait for a replica to catch up. Zero: the primary at once.
        wait: Duration,
    },
    /// The primary serves every read for this long after the write, as Rails and
    /// django-multidb-router do; no WAL positions are asked.
    TimeWindow(Duration),
}

impl Default for ReadYourWrites {
    fn default() -> Self {
        ReadYourWrites::Lsn {
            wait: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_text() {
        let token = CausalToken {
            lsn: (1 << 32) | 0x16B_3748,
            written_at_ms: 1_764_136_800_000,
        };
        assert_eq!(token.to_string(), "1/16B3748@1764136800000");
        assert_eq!("1/16B3748@1764136800000".parse::<CausalToken>(), Ok(token));
        assert_eq!(token.lsn_text(), "1/16B3748");
    }

    #[test]
    fn bad_tokens_are_errors() {
        for bad in [
            "",
            "0/0",
            "@1",
            "x/1@2",
            "1/2@",
            "1/2@-3",
            "1-2@3",
            "1/123456789@0",
        ] {
            let err = bad.parse::<CausalToken>().unwrap_err();
            assert!(
                err.to_string().starts_with("invalid causal token"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn max_keeps_the_later_position_and_time() {
        let a = CausalToken {
            lsn: 5,
            written_at_ms: 10,
        };
        let b = CausalToken {
            lsn: 3,
            written_at_ms: 20,
        };
        assert_eq!(
            a.max(b),
            CausalToken {
                lsn: 5,
                written_at_ms: 20
            }
        );
    }
}
