//! A query whose SQL the router rendered already, to classify it: `PgConnection` takes the text
//! from here instead of rendering the query a second time.
//!
//! Only for queries without a static query id (writes, `sql_query`, boxed queries): those are
//! the ones the classifier renders, and the ones `PgConnection` renders again for its statement
//! cache's key. A query with a static id keeps its own form, since `PgConnection` finds its
//! prepared statement by type without rendering it. So does any query on a session that reports
//! its statements to an instrumentation (diesel's default one): the events show the query as
//! diesel renders it, with its bind values, which the pre-rendered form cannot show.

use std::any::Any;
use std::marker::PhantomData;

use diesel::Connection;
use diesel::PgConnection;
use diesel::connection::{DynInstrumentation, Instrumentation};
use downcast_rs::Downcast;

use diesel::QueryResult;
use diesel::pg::{Pg, PgMetadataLookup};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

use crate::owned::Rendered;

/// A query as rendered (`sql`) with its binds collected: `PgConnection` walks this instead of
/// the query's tree, of type `Q` (whose SQL type `load` needs).
pub(super) struct PreRendered<'q, Q> {
    sql: &'q str,
    safe_to_cache: bool,
    binds: RawBytesBindCollector<Pg>,
    query: PhantomData<fn() -> Q>,
}

impl<'q, Q: QueryFragment<Pg>> PreRendered<'q, Q> {
    /// `query`, rendered as `rendered`, with its binds collected by `types` (the connection it
    /// runs on, which looks up the OIDs of custom types as it would for the query).
    pub(super) fn new(
        rendered: &'q Rendered,
        query: &Q,
        types: &mut (dyn PgMetadataLookup + 'static),
    ) -> QueryResult<Self> {
        let mut binds = RawBytesBindCollector::<Pg>::new();
        query.collect_binds(&mut binds, types, &Pg)?;
        Ok(PreRendered {
            sql: &rendered.sql,
            safe_to_cache: rendered.safe_to_cache,
            binds,
            query: PhantomData,
        })
    }
}

impl<Q> QueryFragment<Pg> for PreRendered<'_, Q> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if !self.safe_to_cache {
            pass.unsafe_to_cache_prepared();
        }
        pass.push_sql(self.sql);
        pass.push_bind_collector_data::<RawBytesBindCollector<Pg>>(&self.binds)
    }
}

/// Whether `session` reports its statements to an instrumentation: anything but diesel's
/// no-op, which a session opened without a default instrumentation has.
pub(super) fn reports_statements(session: &mut PgConnection) -> bool {
    !is_no_op(session.instrumentation())
}

/// Whether `instrumentation` is diesel's no-op, that of a connection without one.
fn is_no_op(instrumentation: &dyn Instrumentation) -> bool {
    let none = DynInstrumentation::none();
    let no_op: &dyn Any = Downcast::as_any(&*none);
    let this: &dyn Any = Downcast::as_any(instrumentation);
    this.type_id() == no_op.type_id()
}

/// No static id: the statement cache finds the statement by its SQL, as it would the query's.
impl<Q> QueryId for PreRendered<'_, Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for PreRendered<'_, Q> {
    type SqlType = Q::SqlType;
}

#[cfg(test)]
mod tests {
    use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
    use diesel::prelude::*;
    use diesel::query_builder::bind_collector::RawBytesBindCollector;
    use diesel::query_builder::{QueryBuilder, QueryFragment};

    use super::PreRendered;
    use crate::owned::Rendered;

    diesel::table! {
        items (id) {
            id -> BigInt,
            price -> BigInt,
        }
    }

    /// The queries here have no custom type to look up.
    struct NoCustomTypes;

    impl PgMetadataLookup for NoCustomTypes {
        fn lookup_type(&mut self, name: &str, _schema: Option<&str>) -> PgTypeMetadata {
            panic!("no custom type expected, asked for {name}")
        }
    }

    /// The text `PgConnection` prepares for `query`, and the binds it sends.
    fn sent(query: &impl QueryFragment<Pg>) -> (String, Vec<Option<Vec<u8>>>, Vec<PgTypeMetadata>) {
        let mut builder = PgQueryBuilder::default();
        query.to_sql(&mut builder, &Pg).unwrap();
        let mut binds = RawBytesBindCollector::<Pg>::new();
        query
            .collect_binds(&mut binds, &mut NoCustomTypes, &Pg)
            .unwrap();
        (builder.finish(), binds.binds, binds.metadata)
    }

    fn pre_rendered<'q, Q: QueryFragment<Pg>>(
        rendered: &'q Rendered,
        query: &Q,
    ) -> PreRendered<'q, Q> {
        PreRendered::new(rendered, query, &mut NoCustomTypes).unwrap()
    }

    #[test]
    fn sends_the_rendered_text_with_the_querys_binds() {
        let update = diesel::update(items::table.find(7_i64)).set(items::price.eq(99_i64));
        let rendered = Rendered::of(&update).unwrap();
        let (sql, binds, metadata) = sent(&update);
        assert_eq!(
            sql,
            r#"UPDATE "items" SET "price" = $1 WHERE ("items"."id" = $2)"#
        );
        assert_eq!(binds.len(), 2);
        assert_eq!(
            sent(&pre_rendered(&rendered, &update)),
            (sql, binds.clone(), metadata)
        );

        // The text is taken as given: a wrong one would show.
        let other = Rendered {
            sql: "SELECT $1, $2".into(),
            safe_to_cache: true,
        };
        let (sql, other_binds, _) = sent(&pre_rendered(&other, &update));
        assert_eq!((sql.as_str(), other_binds), ("SELECT $1, $2", binds));
    }

    #[test]
    fn tells_diesels_no_op_instrumentation_from_any_other() {
        use diesel::connection::{DynInstrumentation, InstrumentationEvent};

        assert!(super::is_no_op(&*DynInstrumentation::none()));
        let closure = DynInstrumentation::from(|_: InstrumentationEvent<'_>| {});
        assert!(!super::is_no_op(&*closure));
        struct Silent;
        impl diesel::connection::Instrumentation for Silent {
            fn on_connection_event(&mut self, _: InstrumentationEvent<'_>) {}
        }
        assert!(!super::is_no_op(&Silent));
    }

    #[test]
    fn keeps_whether_the_query_may_be_cached() {
        fn same_answer(query: &impl QueryFragment<Pg>) -> bool {
            let own = query.is_safe_to_cache_prepared(&Pg).unwrap();
            let rendered = Rendered::of(query).unwrap();
            let wrapped = pre_rendered(&rendered, query);
            assert_eq!(wrapped.is_safe_to_cache_prepared(&Pg).unwrap(), own);
            own
        }
        assert!(!same_answer(&diesel::sql_query("SELECT 1")));
        assert!(same_answer(&items::table.find(7_i64)));
        same_answer(&diesel::update(items::table.find(7_i64)).set(items::price.eq(99_i64)));
    }
}
