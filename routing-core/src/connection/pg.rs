//! What `AsyncPgConnection` offers besides diesel-async's connection traits, on a
//! [`RoutedConnection`]: cancel tokens, LISTEN/NOTIFY, and a place in diesel-async's pools.

use diesel::QueryResult;
use diesel::pg::PgNotification;
use diesel_async::TransactionManager;
use diesel_async::pooled_connection::PoolableConnection;
use futures_util::Stream;
use futures_util::future::Either;

use super::cancel::RoutedCancelToken;
use super::{RoutedConnection, RoutedTransactionManager};
use crate::error::Error;
use crate::route::Target;
use crate::servers::ServerSession;

impl RoutedConnection {
    /// A token that cancels the statement this connection is running, on whichever server runs
    /// it, as `AsyncPgConnection::cancel_token` does for its one session. Tokens stay valid as
    /// the connection moves between servers: each cancels what runs when it is used.
    pub fn cancel_token(&self) -> RoutedCancelToken {
        RoutedCancelToken::new(self.held.running())
    }

    /// The notifications of the channels this connection listens to, as
    /// `AsyncPgConnection::notifications_stream`.
    ///
    /// `LISTEN` runs on the primary, and the primary's session is held as long as this
    /// connection lives, so the notifications arrive here; the session is closed, not pooled,
    /// when this connection is dropped. Without a primary session (nothing has run on the
    /// primary) the stream stays pending. A discovering pool's failover closes the session: its
    /// stream ends, and `LISTEN` must run again on the new primary.
    ///
    /// With [`transaction_pooler(true)`](crate::RoutedPoolBuilder::transaction_pooler) there is
    /// no session to listen on: the stream yields [`Error::NotWithTransactionPooler`] once, and
    /// ends.
    pub fn notifications_stream(&mut self) -> impl Stream<Item = QueryResult<PgNotification>> + '_ {
        self.settle();
        if self.shared().config().transaction_pooler() {
            return Either::Right(Either::Left(futures_util::stream::once(
                std::future::ready(Err(NOTIFICATIONS_NEED_A_SESSION.into_diesel())),
            )));
        }
        match self
            .held
            .conn(Target::Primary)
            .and_then(ServerSession::prepared)
        {
            Some(primary) => Either::Left(primary.notifications_stream()),
            None => Either::Right(Either::Right(futures_util::stream::pending())),
        }
    }
}

/// Why a pool behind a transaction pooler has no notifications.
const NOTIFICATIONS_NEED_A_SESSION: Error = Error::NotWithTransactionPooler {
    what: "RoutedConnection::notifications_stream",
    why: "LISTEN needs a session of its own, and a transaction pooler gives each transaction \
          whichever server connection is free",
};

/// A routed connection can sit in diesel-async's bb8, deadpool and mobc pools: it is broken
/// when its transaction state is, or a server session it holds is closed.
impl PoolableConnection for RoutedConnection {
    fn is_broken(&mut self) -> bool {
        <RoutedTransactionManager as TransactionManager<Self>>::is_broken_transaction_manager(self)
            || self.held.any_broken()
    }
}
