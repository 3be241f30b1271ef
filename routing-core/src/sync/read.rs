//! Reads on replicas for the synchronous connection: one attempt on one replica, and the
//! failover loop around it, whose bookkeeping and rules are the async connection's
//! (`reads::ReadAttempts`, `route::after_failure`).

use std::any::TypeId;
use std::sync::Arc;
use std::time::Duration;

use diesel::pg::Pg;
use diesel::query_builder::QueryFragment;
use diesel::result::Error as DieselError;
use diesel::{PgConnection, QueryResult};

use super::RoutedConnection;
use super::connection::lost_connection;
use crate::causal::ReadYourWrites;
use crate::classified;
use crate::context::ReadNeeds;
use crate::error::Error;
use crate::reads::{self, Attempt, ReadAttempts, Step};
use crate::reason::Reason;
use crate::route::Target;
use crate::servers::StatementKey;
use crate::servers::catalog::blocking as catalog;

impl RoutedConnection {
    /// Runs a read on a replica: the held one when eligible, else one chosen by the policy; a
    /// replica that fails moves the read to the next one, and the primary serves the read when
    /// no replica is eligible (lag, causal token) and, unless fallback is off, when none can be
    /// reached. A statement a replica refuses as a write runs on the primary.
    pub(super) fn read_on_replica<R>(
        &mut self,
        needs: &ReadNeeds,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
        mut exec: impl FnMut(&mut PgConnection) -> QueryResult<R>,
    ) -> QueryResult<R> {
        let shared = Arc::clone(self.shared());
        let mut attempts = ReadAttempts::new();
        while let Some((index, verify_token)) =
            attempts.next(&shared, self.replica_index(), needs, true)
        {
            let attempt = self.try_replica(index, verify_token, needs, &mut exec);
            match attempts.record(attempt) {
                Step::Again => {}
                Step::Return(result) => return result,
                Step::Refused(error) => return self.refused(index, query, query_id, error, exec),
                Step::Fallback => break,
            }
        }
        let route = attempts.fallback(&shared).map_err(Error::into_diesel)?;
        self.run_on(route, false, exec)
    }

    /// One attempt to serve a read on replica `index`: holds a session to it, checks the causal
    /// token when the probe does not know (`verify_token`), and runs the statement.
    fn try_replica<R>(
        &mut self,
        index: usize,
        verify_token: bool,
        needs: &ReadNeeds,
        exec: &mut impl FnMut(&mut PgConnection) -> QueryResult<R>,
    ) -> Attempt<R> {
        let shared = Arc::clone(self.shared());
        let server = &shared.replicas()[index];
        if server.health().is_banned() {
            return Attempt::Next(server.banned_error());
        }
        if let Err(error) = self.hold_replica(index) {
            return Attempt::Next(error);
        }
        let lost = || {
            Attempt::Next(Error::Query {
                role: server.role(),
                source: lost_connection(),
            })
        };
        if let Some(token) = needs.causal_token.filter(|_| verify_token) {
            let Some(conn) = self.conn(Target::Replica) else {
                return lost();
            };
            // Only a bounded number of reads wait at once; the others ask once.
            let permit = shared.tokens().waits().try_acquire();
            let wait = match (shared.config().read_your_writes(), &permit) {
                (ReadYourWrites::Lsn { wait }, Ok(_)) => wait,
                _ => Duration::ZERO,
            };
            let replayed = catalog::replayed(conn, token, wait);
            drop(permit);
            match replayed {
                Ok(true) => server.health().note_replay(token.lsn()),
                Ok(false) => return Attempt::Behind,
                Err(error) => return self.failed(index, error),
            }
        }
        server.health().count_routed(Reason::ScopeAllowsReplica);
        let Some(conn) = self.conn(Target::Replica) else {
            return lost();
        };
        match exec(conn) {
            Ok(value) => {
                tracing::debug!(target: "routing_core", server = %server.role(), "read served");
                Attempt::Served(value)
            }
            Err(error) => self.failed(index, error),
        }
    }

    /// What `error` from replica `index` means for the read (see [`reads::judge`]).
    fn failed<R>(&mut self, index: usize, error: DieselError) -> Attempt<R> {
        let broken = self
            .session(Target::Replica)
            .is_none_or(|session| session.is_broken());
        let (attempt, discard) = reads::judge(self.shared(), index, error, broken);
        if discard {
            self.discard_replica();
        }
        attempt
    }

    /// A statement that replica `index` refused as a write (SQLSTATE 25006): the pool learns
    /// it, and it runs on the primary unless the pool says not to.
    fn refused<R>(
        &mut self,
        index: usize,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
        error: DieselError,
        exec: impl FnOnce(&mut PgConnection) -> QueryResult<R>,
    ) -> QueryResult<R> {
        let shared = Arc::clone(self.shared());
        let sql = classified::rendered(&shared, query, query_id)?.sql;
        let key = StatementKey::of(query_id, &sql);
        let route = reads::refusal(&shared, index, key, Some(&sql), error)?;
        self.mark_written();
        self.run_on(route, false, exec)
    }

    /// Holds a session to an eligible replica for a read-only transaction (the held one when it
    /// still is; no causal token it has not been seen to replay): `Ok(true)` when one is held,
    /// `Ok(false)` when the primary must serve the transaction, an error when no replica can be
    /// reached and falling back is off.
    pub(super) fn hold_eligible_replica(&mut self, needs: &ReadNeeds) -> Result<bool, Error> {
        let shared = Arc::clone(self.shared());
        let mut attempts = ReadAttempts::new();
        while let Some((index, _)) = attempts.next(&shared, self.replica_index(), needs, false) {
            match self.hold_replica(index) {
                Ok(()) => return Ok(true),
                Err(error) => attempts.failed(error),
            }
        }
        attempts.fallback(&shared).map(|_| false)
    }
}
