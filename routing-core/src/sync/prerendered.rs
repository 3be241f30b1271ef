//! When the synchronous connection runs a query from the SQL the router rendered to classify
//! it ([`OwnedQuery::collected`], binds collected once on the session it runs on) instead of
//! letting `PgConnection` render it a second time for its statement cache's key.
//!
//! Only queries without a static query id (writes, `sql_query`, boxed queries): those are the
//! ones the classifier renders. A query with a static id keeps its own form, since
//! `PgConnection` finds its prepared statement by type without rendering it. So does any query
//! on a session that reports its statements to an instrumentation (diesel's default one): the
//! events show the query as diesel renders it, with its bind values, which the owned form cannot
//! show.
//!
//! [`OwnedQuery::collected`]: crate::owned::OwnedQuery::collected

use std::any::Any;

use diesel::connection::{DynInstrumentation, Instrumentation};
use diesel::{Connection, PgConnection};
use downcast_rs::Downcast;

/// Whether `session` reports its statements to an instrumentation: anything but diesel's
/// no-op, which a session opened without a default instrumentation has.
pub(in crate::sync) fn reports_statements(session: &mut PgConnection) -> bool {
    !is_no_op(session.instrumentation())
}

/// Whether `instrumentation` is diesel's no-op, that of a connection without one.
fn is_no_op(instrumentation: &dyn Instrumentation) -> bool {
    let none = DynInstrumentation::none();
    let no_op: &dyn Any = Downcast::as_any(&*none);
    let this: &dyn Any = Downcast::as_any(instrumentation);
    this.type_id() == no_op.type_id()
}

#[cfg(test)]
mod tests {
    use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
    use diesel::prelude::*;
    use diesel::query_builder::bind_collector::RawBytesBindCollector;
    use diesel::query_builder::{QueryBuilder, QueryFragment};

    use crate::owned::{NoId, OwnedQuery, Rendered};

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

    fn pre_rendered(rendered: &Rendered, query: &impl QueryFragment<Pg>) -> OwnedQuery<NoId> {
        OwnedQuery::collected(query, rendered.clone(), &mut NoCustomTypes).unwrap()
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
