//! The server connections a [`RoutedConnection`](super::RoutedConnection) holds, and when they
//! go back to their pool: a connection still running a statement whose future (or row stream)
//! was dropped, one inside a transaction, and one whose session state changed are closed
//! instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use deadpool::managed::Object;
use diesel::QueryResult;
use pin_project_lite::pin_project;

use crate::route::Target;
use crate::servers::cancel::{self, CANCEL_PATIENCE, Canceller};
use crate::servers::connect::ServerConn;
use crate::servers::{Lease, PooledConn, ServerSession, Shared, Watchable};

/// A connection to one replica, counted in its `in_flight` while held.
pub(super) struct HeldReplica {
    pub(super) index: usize,
    conn: PooledConn,
    _lease: Lease,
}

/// The server connections of a routed connection.
#[derive(Default)]
pub(super) struct Held {
    primary: Option<PooledConn>,
    /// The node the primary connection goes to, in a pool that discovers its primary.
    primary_node: Option<usize>,
    replica: Option<HeldReplica>,
    busy: Busy,
}

/// What cancels the statement a routed connection runs: set while one runs. Shared with its
/// [`RoutedCancelToken`](super::RoutedCancelToken)s.
pub(super) type Running = Mutex<Option<Arc<Canceller>>>;

/// The server connection a statement runs on.
#[derive(Default)]
struct Busy {
    /// Set while a statement runs; still set after its future was dropped before it finished:
    /// it may still be running on the server.
    target: Option<Target>,
    /// Made by the first cancel token: the canceller of the statement running.
    running: OnceLock<Arc<Running>>,
}

impl Busy {
    fn start(&mut self, target: Target, canceller: Option<&Arc<Canceller>>) {
        self.target = Some(target);
        if let Some(running) = self.running.get() {
            *running.lock().unwrap_or_else(|e| e.into_inner()) = canceller.cloned();
        }
    }

    fn clear(&mut self) {
        self.target = None;
        if let Some(running) = self.running.get() {
            *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

impl Held {
    pub(super) fn holds(&self, target: Target) -> bool {
        match target {
            Target::Primary => self.primary.is_some(),
            Target::Replica => self.replica.is_some(),
        }
    }

    /// The session held for `target`.
    pub(super) fn session(&mut self, target: Target) -> Option<&mut ServerConn> {
        match target {
            Target::Primary => self.primary.as_deref_mut(),
            Target::Replica => self.replica.as_mut().map(|held| &mut *held.conn),
        }
    }

    /// The server session held for `target`.
    pub(super) fn conn(&mut self, target: Target) -> Option<&mut ServerSession> {
        self.session(target).map(ServerConn::pg)
    }

    /// Whether a held session is closed.
    pub(super) fn any_broken(&mut self) -> bool {
        [Target::Primary, Target::Replica]
            .into_iter()
            .any(|target| self.conn(target).is_some_and(|conn| conn.is_broken()))
    }

    /// What cancels the statement running, for a cancel token.
    pub(super) fn running(&self) -> Arc<Running> {
        Arc::clone(self.busy.running.get_or_init(Arc::default))
    }

    /// The index among the pool's replicas (or nodes) of `target`'s server: the held replica,
    /// or the node of a discovering pool's primary; `None` for a configured primary.
    pub(super) fn index(&self, target: Target) -> Option<usize> {
        match target {
            Target::Primary => self.primary_node,
            Target::Replica => self.replica_index(),
        }
    }

    /// The index of the replica held.
    pub(super) fn replica_index(&self) -> Option<usize> {
        self.replica.as_ref().map(|held| held.index)
    }

    /// Holds `conn` as the primary's connection, to node `node` of a discovering pool.
    pub(super) fn hold_primary(
        &mut self,
        conn: PooledConn,
        node: Option<usize>,
    ) -> &mut ServerSession {
        self.primary_node = node;
        self.primary.insert(conn).pg()
    }

    /// The node the held primary connection goes to (`None`: the configured primary).
    pub(super) fn primary_node(&self) -> Option<usize> {
        self.primary_node
    }

    /// Holds `conn` to replica `index`, releasing the replica held before.
    pub(super) fn hold_replica(&mut self, index: usize, conn: PooledConn, lease: Lease) {
        self.release(Target::Replica);
        self.replica = Some(HeldReplica {
            index,
            conn,
            _lease: lease,
        });
    }

    /// Gives `target`'s connection back to its pool, or closes it when it must not be reused.
    pub(super) fn release(&mut self, target: Target) {
        let busy = self.busy.target == Some(target);
        let conn = match target {
            Target::Primary => self.primary.take(),
            Target::Replica => self.replica.take().map(|held| held.conn),
        };
        if let Some(mut conn) = conn {
            if busy {
                self.busy.clear();
            }
            conn.clear_relay();
            if busy || !conn.reusable() {
                drop(Object::take(conn));
            }
        }
    }

    /// Closes `target`'s connection instead of returning it to its pool.
    pub(super) fn discard(&mut self, target: Target) {
        let conn = match target {
            Target::Primary => self.primary.take(),
            Target::Replica => self.replica.take().map(|held| held.conn),
        };
        if self.busy.target == Some(target) {
            self.busy.clear();
        }
        if let Some(conn) = conn {
            drop(Object::take(conn));
        }
    }

    /// A connection that may still run a statement: one a dropped statement future left
    /// running (cleared), or one with a row stream dropped before its end.
    pub(super) fn take_busy(&mut self) -> Option<Target> {
        let target = self.busy.target;
        self.busy.clear();
        target.or_else(|| {
            [Target::Primary, Target::Replica]
                .into_iter()
                .find(|&target| self.session(target).is_some_and(|s| s.stream_abandoned()))
        })
    }

    /// Marks `target`'s connection busy with a statement: the guard cancels it on the server
    /// when dropped before [`Held::finish`].
    pub(super) fn start(&mut self, target: Target) -> StatementGuard {
        let cancel = self
            .session(target)
            .map(|session| Arc::clone(session.canceller()));
        self.busy.start(target, cancel.as_ref());
        StatementGuard {
            cancel,
            cancels_rows: true,
        }
    }

    /// The statement `guard` watched has finished.
    pub(super) fn finish(&mut self, guard: StatementGuard) {
        guard.disarm();
        self.busy.clear();
    }

    /// `run` on `target`'s connection, watched: marked busy until its future finishes, and
    /// cancelled on the server if that future is dropped first. On the primary, errors that
    /// mean the primary is gone are told apart (see `Shared::primary_error`).
    pub(super) fn watched<'c, F>(
        &'c mut self,
        target: Target,
        shared: &Arc<Shared>,
        autocommit_write: bool,
        run: impl FnOnce(&'c mut ServerSession) -> F,
    ) -> Option<Watched<'c, F>> {
        let on_primary =
            (target == Target::Primary).then(|| (Arc::clone(shared), self.primary_node));
        let guard = self.start(target).of_write(autocommit_write);
        let Held {
            primary,
            replica,
            busy,
            ..
        } = self;
        let session = match target {
            Target::Primary => primary.as_deref_mut()?,
            Target::Replica => &mut *replica.as_mut()?.conn,
        };
        Some(Watched {
            future: run(session.pg()),
            guard: Some(guard),
            busy,
            primary: on_primary,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release(Target::Primary);
        self.release(Target::Replica);
    }
}

/// Cancels a statement on its server when dropped before it is disarmed: the statement's future
/// was dropped (a request timed out, a client went away) while the server ran it.
pub(super) struct StatementGuard {
    cancel: Option<Arc<Canceller>>,
    /// Whether a row stream of the statement dropped before its end is cancelled (see
    /// [`StatementGuard::of_write`]).
    cancels_rows: bool,
}

impl StatementGuard {
    fn disarm(mut self) {
        self.cancel = None;
    }

    /// The guard of a write outside a transaction (when `autocommit_write`): its row stream,
    /// dropped before its end, closes the server connection without cancelling the statement,
    /// whose commit may still be waiting for a synchronous standby.
    pub(super) fn of_write(mut self, autocommit_write: bool) -> Self {
        self.cancels_rows = !autocommit_write;
        self
    }

    /// What the statement gave, its rows watched: a row stream dropped before its end cancels
    /// the statement (unless [`of_write`](Self::of_write) says not to) and keeps its server
    /// connection from being reused.
    pub(super) fn watch<T: Watchable>(&self, output: T) -> T {
        match &self.cancel {
            Some(canceller) => output.watch_rows(canceller, self.cancels_rows),
            None => output,
        }
    }
}

impl Drop for StatementGuard {
    fn drop(&mut self) {
        if let Some(token) = self.cancel.take() {
            tracing::debug!(target: "routing_core", "statement dropped before it finished: cancelling it");
            cancel::cancel(&token, CANCEL_PATIENCE);
        }
    }
}

pin_project! {
    /// A statement's future on a held connection, watched by a [`StatementGuard`].
    pub(super) struct Watched<'c, F> {
        #[pin]
        future: F,
        guard: Option<StatementGuard>,
        busy: &'c mut Busy,
        // On the primary: the pool, and the node the connection goes to.
        primary: Option<(Arc<Shared>, Option<usize>)>,
    }
}

impl<F, T> Future for Watched<'_, F>
where
    F: Future<Output = QueryResult<T>>,
    T: Watchable,
{
    type Output = QueryResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<QueryResult<T>> {
        let this = self.project();
        let mut output = std::task::ready!(this.future.poll(cx));
        if let Some(guard) = this.guard.take() {
            output = output.map(|value| guard.watch(value));
            guard.disarm();
        }
        this.busy.clear();
        Poll::Ready(match (output, this.primary.take()) {
            (Err(error), Some((shared, node))) => Err(shared.primary_error(node, error)),
            (output, _) => output,
        })
    }
}
