//! What each statement tells operators: a span by the OpenTelemetry database-client conventions,
//! and the `db.client.operation.duration` histogram.
//!
//! The span (`statement`, target `routing_core::statement`, level INFO) carries
//! `db.system.name`, `db.namespace`, `db.operation.name`, `server.address`, `server.port`,
//! `db.query.text` when the pool records it (never with bind values), and the router's own
//! `db.routing.role`, `db.routing.replica`, `db.routing.reason`, `db.routing.attempt` and
//! `db.routing.fallback`; a failed statement sets `error.type` (the SQLSTATE when the router
//! knows it, else the kind of error) and `otel.status_code = "ERROR"`. With no subscriber, a
//! span is a disabled handle: creating and recording it costs a branch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use pin_project_lite::pin_project;
// The processor's time-stamp counter: a fraction of the cost of the system clock, read twice
// for every statement while a metrics recorder is installed.
use quanta::Instant;
use tracing::Span;
use tracing::field::Empty;

use crate::error::Error;
use crate::failure;
use crate::reason::Reason;
use crate::route::Target;
use crate::servers::{Server, Shared};

/// The telemetry of the statement a connection is running.
#[derive(Debug)]
pub(crate) struct Trace {
    span: Span,
    /// When the statement started, once it did.
    started: Option<Instant>,
    /// The server of the latest attempt: the primary, or a replica's index.
    server: Option<(Target, Option<usize>)>,
    attempts: u32,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            span: Span::none(),
            started: None,
            server: None,
            attempts: 0,
        }
    }
}

impl Trace {
    /// Starts the telemetry of a statement performing `operation`, with its text when the pool
    /// records it. The clock is read only when a metrics recorder takes the statement's duration
    /// (see [`Shared::times_statements`]).
    pub(crate) fn start(
        &mut self,
        shared: &Shared,
        operation: Option<&'static str>,
        text: Option<&str>,
    ) {
        self.span = tracing::info_span!(
            target: "routing_core::statement",
            "statement",
            otel.name = operation.unwrap_or("statement"),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = "postgresql",
            db.namespace = Empty,
            db.operation.name = operation,
            db.query.text = text,
            server.address = Empty,
            server.port = Empty,
            db.routing.role = Empty,
            db.routing.replica = Empty,
            db.routing.reason = Empty,
            db.routing.attempt = Empty,
            db.routing.fallback = Empty,
            db.response.status_code = Empty,
            error.type = Empty,
        );
        self.started = shared.times_statements().then(Instant::now);
        self.server = None;
        self.attempts = 0;
    }

    /// The span, to enter while the statement runs.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The statement is sent to `target` for `reason`: the replica or the node of a discovering
    /// pool with index `index`, or the configured primary when `index` is `None`.
    pub(crate) fn sent(
        &mut self,
        shared: &Shared,
        target: Target,
        index: Option<usize>,
        reason: Reason,
    ) {
        self.attempts += 1;
        self.server = Some((target, index));
        if self.span.is_disabled() {
            return;
        }
        let span = &self.span;
        if let Some(server) = server(shared, target, index) {
            let peer = server.peer();
            span.record("db.namespace", &*peer.namespace);
            span.record("server.address", &*peer.address);
            span.record("server.port", peer.port);
        }
        span.record("db.routing.role", target.label());
        match index.filter(|_| target == Target::Replica) {
            Some(index) => span.record("db.routing.replica", index),
            None => span.record("db.routing.replica", Empty),
        };
        span.record("db.routing.reason", reason.label());
        span.record("db.routing.attempt", self.attempts);
    }

    /// No replica served the read: the primary does.
    pub(crate) fn fell_back(&self) {
        self.span.record("db.routing.fallback", true);
    }

    /// The statement finished with `result`: its error on the span, its duration in the
    /// server's histogram; the span closes.
    pub(crate) fn finish<T>(&mut self, shared: &Shared, result: &Result<T, DieselError>) {
        let span = std::mem::replace(&mut self.span, Span::none());
        let error = result.as_ref().err().filter(|error| !is_not_found(error));
        if let Some(error) = error.filter(|_| !span.is_disabled()) {
            let (error_type, sqlstate) = error_type(error);
            span.record("otel.status_code", "ERROR");
            span.record("error.type", error_type);
            if let Some(sqlstate) = sqlstate {
                span.record("db.response.status_code", sqlstate);
            }
        }
        let (Some((target, index)), Some(started)) = (self.server.take(), self.started.take())
        else {
            return;
        };
        if let Some(server) = server(shared, target, index) {
            server.health().record_duration(
                target == Target::Primary,
                error.is_none(),
                started.elapsed(),
            );
        }
    }
}

/// The server of `target` with index `index` (see [`Trace::sent`]).
fn server(shared: &Shared, target: Target, index: Option<usize>) -> Option<&Server> {
    match (target, index) {
        (_, Some(index)) => shared.replicas().get(index),
        (Target::Primary, None) => shared.primary(),
        (Target::Replica, None) => None,
    }
}

/// A query that found no row is not a failed operation.
fn is_not_found(error: &DieselError) -> bool {
    matches!(error, DieselError::NotFound)
}

/// `error.type` of a failed statement, and its SQLSTATE when the router knows it.
fn error_type(error: &DieselError) -> (&'static str, Option<&'static str>) {
    if let Some(routing) = Error::from_diesel(error) {
        return (routing.kind(), None);
    }
    let sqlstate = match error {
        DieselError::DatabaseError(kind, _) => match kind {
            DatabaseErrorKind::UniqueViolation => Some("23505"),
            DatabaseErrorKind::ForeignKeyViolation => Some("23503"),
            DatabaseErrorKind::NotNullViolation => Some("23502"),
            DatabaseErrorKind::CheckViolation => Some("23514"),
            DatabaseErrorKind::RestrictViolation => Some("23001"),
            DatabaseErrorKind::ExclusionViolation => Some("23P01"),
            DatabaseErrorKind::ReadOnlyTransaction => Some("25006"),
            DatabaseErrorKind::SerializationFailure => Some("40001"),
            _ => None,
        }
        .or_else(|| failure::known(error).map(|known| known.sqlstate)),
        _ => None,
    };
    let error_type = match (sqlstate, error) {
        (Some(sqlstate), _) => sqlstate,
        (None, DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)) => {
            "closed_connection"
        }
        (None, DieselError::DatabaseError(..)) => "database_error",
        (None, DieselError::DeserializationError(_)) => "deserialization_error",
        (None, DieselError::SerializationError(_)) => "serialization_error",
        (None, _) => "diesel_error",
    };
    (error_type, sqlstate)
}

pin_project! {
    /// A statement's future inside its span; its telemetry is finished with its output.
    pub(crate) struct Traced<'c, F> {
        #[pin]
        future: F,
        trace: &'c mut Trace,
        shared: &'c Shared,
    }
}

impl<'c, F> Traced<'c, F> {
    pub(crate) fn new(future: F, trace: &'c mut Trace, shared: &'c Shared) -> Self {
        Traced {
            future,
            trace,
            shared,
        }
    }
}

impl<F, T> Future for Traced<'_, F>
where
    F: Future<Output = Result<T, DieselError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let entered = this.trace.span.enter();
        let output = std::task::ready!(this.future.poll(cx));
        drop(entered);
        this.trace.finish(this.shared, &output);
        Poll::Ready(output)
    }
}
