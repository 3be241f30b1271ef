//! The rows a server session returns, and their stream: diesel-async's rows from a session's
//! prepared statements, or tokio-postgres's rows from unnamed statements (through a
//! transaction pooler), behind one diesel [`Row`] type.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use diesel::QueryResult;
use diesel::pg::{Pg, PgValue};
use diesel::row::{Field, PartialRow, Row, RowIndex, RowSealed};
use diesel_async::{AsyncConnectionCore, AsyncPgConnection};
use futures_util::Stream;
use futures_util::stream::BoxStream;
use tokio_postgres::types::{FromSql, Type};

use super::cancel::{Canceller, RowsWatch};

/// diesel-async's row, which only diesel-async can make.
pub(crate) type PgRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;
type PgField<'f> = <PgRow as Row<'static, Pg>>::Field<'f>;

/// A row of a [`RoutedConnection`](crate::RoutedConnection)'s results; read it with diesel's
/// [`Row`] methods, as any diesel row.
pub struct RoutedRow(Inner);

impl std::fmt::Debug for RoutedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedRow")
            .field("fields", &Row::<'_, Pg>::field_count(self))
            .finish_non_exhaustive()
    }
}

enum Inner {
    Prepared(PgRow),
    Unnamed(tokio_postgres::Row),
}

impl RoutedRow {
    pub(crate) fn unnamed(row: tokio_postgres::Row) -> Self {
        RoutedRow(Inner::Unnamed(row))
    }
}

impl RowSealed for RoutedRow {}

impl<'a> Row<'a, Pg> for RoutedRow {
    type Field<'f>
        = RoutedField<'f>
    where
        'a: 'f,
        Self: 'f;
    type InnerPartialRow = Self;

    fn field_count(&self) -> usize {
        match &self.0 {
            Inner::Prepared(row) => Row::<'a, Pg>::field_count(row),
            Inner::Unnamed(row) => row.len(),
        }
    }

    fn get<'b, I>(&'b self, idx: I) -> Option<Self::Field<'b>>
    where
        'a: 'b,
        Self: RowIndex<I>,
    {
        let idx = self.idx(idx)?;
        match &self.0 {
            Inner::Prepared(row) => Row::<'a, Pg>::get(row, idx).map(FieldInner::Prepared),
            Inner::Unnamed(row) => {
                let oid = NonZeroU32::new(row.columns().get(idx)?.type_().oid())?;
                Some(FieldInner::Unnamed { row, idx, oid })
            }
        }
        .map(RoutedField)
    }

    fn partial_row(&self, range: std::ops::Range<usize>) -> PartialRow<'_, Self> {
        PartialRow::new(self, range)
    }
}

impl RowIndex<usize> for RoutedRow {
    fn idx(&self, idx: usize) -> Option<usize> {
        (idx < Row::<'_, Pg>::field_count(self)).then_some(idx)
    }
}

impl<'n> RowIndex<&'n str> for RoutedRow {
    fn idx(&self, name: &'n str) -> Option<usize> {
        match &self.0 {
            Inner::Prepared(row) => row.idx(name),
            Inner::Unnamed(row) => row.columns().iter().position(|c| c.name() == name),
        }
    }
}

/// A field of a [`RoutedRow`].
pub struct RoutedField<'f>(FieldInner<'f>);

impl std::fmt::Debug for RoutedField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedField")
            .field("name", &self.field_name())
            .finish_non_exhaustive()
    }
}

enum FieldInner<'f> {
    Prepared(PgField<'f>),
    Unnamed {
        row: &'f tokio_postgres::Row,
        idx: usize,
        oid: NonZeroU32,
    },
}

impl<'f> Field<'f, Pg> for RoutedField<'f> {
    fn field_name(&self) -> Option<&str> {
        match &self.0 {
            FieldInner::Prepared(field) => field.field_name(),
            FieldInner::Unnamed { row, idx, .. } => Some(row.columns()[*idx].name()),
        }
    }

    fn value(&self) -> Option<PgValue<'_>> {
        match &self.0 {
            FieldInner::Prepared(field) => field.value(),
            FieldInner::Unnamed { row, idx, oid } => {
                let Raw(bytes) = row.try_get(*idx).ok()?;
                Some(PgValue::new(bytes?, oid))
            }
        }
    }
}

/// A column's value as the server sent it (binary), for diesel to read.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The rows of a statement, as they arrive.
///
/// Dropped before its end (after a few rows, or by a caller that wanted only the first), the
/// stream of a routed statement makes sure its statement does not run on: when the rest of the
/// result has not already arrived, the statement is cancelled on its server and its server
/// connection is closed rather than reused.
pub struct RowStream {
    rows: Rows,
    watch: Option<RowsWatch>,
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowStream")
    }
}

enum Rows {
    Prepared(BoxStream<'static, QueryResult<PgRow>>),
    Unnamed(Pin<Box<tokio_postgres::RowStream>>),
    Mapped(BoxStream<'static, QueryResult<RoutedRow>>),
    /// Every row of a statement that has ended (see [`RowStream::settled`]).
    Settled(std::vec::IntoIter<RoutedRow>),
}

impl RowStream {
    fn of(rows: Rows) -> Self {
        RowStream { rows, watch: None }
    }

    pub(crate) fn prepared(rows: BoxStream<'static, QueryResult<PgRow>>) -> Self {
        RowStream::of(Rows::Prepared(rows))
    }

    pub(crate) fn unnamed(rows: tokio_postgres::RowStream) -> Self {
        RowStream::of(Rows::Unnamed(Box::pin(rows)))
    }

    /// Rows passed through another stream (to check or replay them).
    pub(crate) fn boxed(rows: BoxStream<'static, QueryResult<RoutedRow>>) -> Self {
        RowStream::of(Rows::Mapped(rows))
    }

    /// The stream, watched for the session behind `canceller` (see [`RowsWatch`]). The rows
    /// of a statement that has ended need no watch.
    pub(crate) fn watched(mut self, canceller: &Arc<Canceller>, cancels: bool) -> Self {
        if !matches!(self.rows, Rows::Settled(_)) {
            self.watch = Some(RowsWatch::new(canceller, cancels));
        }
        self
    }

    /// Every row, read up to the end of the statement, where its server says whether it
    /// succeeded: the first error fails the whole statement, rows read before it included.
    ///
    /// A row stream ends where its statement ends, and the rows come before it: an error the
    /// server sends after them (a deferred constraint that fails the commit of a write outside
    /// a transaction, a commit cut short when the server shuts down while it waits for a
    /// synchronous standby) is lost on a caller that takes the first row and drops the rest, as
    /// diesel's `get_result` does. That caller would take a write that was rolled back, or that
    /// exists on this server only, for done.
    pub(crate) async fn settled(mut self) -> QueryResult<Self> {
        let mut rows = Vec::new();
        while let Some(row) = futures_util::StreamExt::next(&mut self).await {
            rows.push(row?);
        }
        Ok(RowStream::of(Rows::Settled(rows.into_iter())))
    }

    fn poll_rows(&mut self, cx: &mut Context<'_>) -> Poll<Option<QueryResult<RoutedRow>>> {
        let polled = match &mut self.rows {
            Rows::Prepared(rows) => rows
                .as_mut()
                .poll_next(cx)
                .map(|row| row.map(|row| row.map(|row| RoutedRow(Inner::Prepared(row))))),
            Rows::Unnamed(rows) => rows.as_mut().poll_next(cx).map(|row| {
                row.map(|row| {
                    row.map(RoutedRow::unnamed)
                        .map_err(super::unnamed::diesel_error)
                })
            }),
            Rows::Mapped(rows) => rows.as_mut().poll_next(cx),
            Rows::Settled(rows) => Poll::Ready(rows.next().map(Ok)),
        };
        // The end of the rows, or an error (which ends the statement), is the statement's end.
        if let (Poll::Ready(None | Some(Err(_))), Some(watch)) = (&polled, &mut self.watch) {
            watch.end();
        }
        polled
    }
}

/// How many rows already received a watched stream dropped early reads past, looking for its
/// end, before it gives up and cancels the statement.
const ROWS_READ_ON_DROP: usize = 8;

impl Drop for RowStream {
    fn drop(&mut self) {
        if self.watch.as_ref().is_none_or(RowsWatch::ended) {
            return;
        }
        // A caller that wanted one row (diesel's `get_result`, `first`) drops the stream whose
        // end has most often arrived with it: reading what is already here finds that end at no
        // cost. Anything that would wait means the statement is still running.
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        for _ in 0..ROWS_READ_ON_DROP {
            match self.poll_rows(&mut cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(None | Some(Err(_))) | Poll::Pending => break,
            }
        }
        // The watch, dropped with the stream, cancels the statement if it has not ended.
    }
}

impl Stream for RowStream {
    type Item = QueryResult<RoutedRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_rows(cx)
    }
}
