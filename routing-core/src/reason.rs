//! Why a statement went where it went: one list, from which the enum, its metric label and its
//! description are all generated, so they cannot drift apart.

use std::fmt;

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal, $text:literal;)*) => {
        /// Why the router sent a statement to the server it chose.
        ///
        /// Its [`label`](Reason::label) is the `reason` label of the `routing_queries_total`
        /// metric; its `Display` is a sentence for logs.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in declaration order: `ALL[r.index()] == r`.
            pub const ALL: &'static [Reason] = &[$(Reason::$name),*];

            /// The metric label: lowercase, stable.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Reason::$name => $label,)*
                }
            }

            const fn text(self) -> &'static str {
                match self {
                    $(Reason::$name => $text,)*
                }
            }
        }
    };
}

reasons! {
    /// Inside a transaction: the transaction's server.
    Transaction => "transaction", "inside a transaction";
    /// The pool is in a test transaction: every statement on the primary.
    TestTransaction => "test_transaction", "the pool is in a test transaction";
    /// The statement writes (see [`WriteReason`](crate::WriteReason)).
    Write => "write", "write";
    /// This connection wrote before: read-your-writes within the connection.
    AfterWrite => "after_write", "sticky: this connection wrote before";
    /// The request wrote before, on another connection.
    RequestWrote => "request_wrote", "sticky: this request wrote before";
    /// `RoutedConnection::primary`, the escape hatch.
    Forced => "forced", "forced: RoutedConnection::primary";
    /// The routing scope does not allow a replica (or there is no scope).
    ScopeDeniesReplica => "scope_primary", "scope: replica not allowed";
    /// The pool has no replica.
    NoReplicas => "no_replica", "no replica configured";
    /// The routing scope allows a replica.
    ScopeAllowsReplica => "scope_replica", "scope: replica allowed";
    /// A causal token within `ReadYourWrites::TimeWindow` of its write.
    CausalWindow => "causal_window", "causal token: within the time window of a write";
    /// Every replica lags, is banned or is behind the causal token.
    NoReplicaEligible => "no_replica_eligible", "no replica eligible";
    /// Replicas were tried and none could serve the read.
    Fallback => "fallback", "fallback: no replica could serve the read";
    /// A replica refused the statement as a write (SQLSTATE 25006).
    RefusedAsWrite => "refused_as_write", "a replica refused the statement as a write";
}

impl Reason {
    /// The position of this reason in [`Reason::ALL`], for arrays indexed by reason.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// How many reasons there are.
    pub const COUNT: usize = Reason::ALL.len();
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_label_and_list_agree() {
        let mut labels = std::collections::HashSet::new();
        for (position, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), position);
            assert!(
                labels.insert(reason.label()),
                "duplicate {}",
                reason.label()
            );
            assert!(
                reason
                    .label()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!(!reason.to_string().is_empty());
        }
        assert_eq!(Reason::COUNT, 13);
        assert_eq!(Reason::ScopeDeniesReplica.label(), "scope_primary");
    }
}
