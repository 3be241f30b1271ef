//! Each statement's span and duration, by the OpenTelemetry database-client conventions,
//! captured from a real subscriber and recorder and checked against where the server says the
//! statement ran.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use routing_core::{Error, RoutedPool, with_read_replica};
use routing_fixtures::products;
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery, servers, unique};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};

use crate::support::RanOn;

/// The fields of one span, as text.
type Fields = BTreeMap<String, String>;

/// The closed `routing_core::statement` spans of one capture, in the order they close.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Fields>>>);

impl Spans {
    fn take(&self) -> Vec<Fields> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

thread_local! {
    /// The capture of this thread, while a test holds one.
    static CAPTURING: RefCell<Option<Spans>> = const { RefCell::new(None) };
}

/// A span being captured: its fields so far, and where it goes when it closes.
struct Open {
    fields: Fields,
    into: Spans,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// The process's subscriber: it keeps the statement spans made on a thread while that thread
/// holds a capture, and nothing else.
///
/// One subscriber for the whole test binary, never a scoped one per test: tracing caches each
/// call site's interest process-wide, and a call site first reached on a thread with no
/// subscriber while one test's scoped subscriber is the only one alive is cached as
/// uninteresting, for that test too.
struct CaptureLayer;

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != "routing_core::statement" {
            return;
        }
        let Some(into) = CAPTURING.with(|c| c.borrow().clone()) else {
            return;
        };
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Open { fields, into });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(open) = span.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Collect(&mut open.fields));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(open) = span.extensions_mut().remove::<Open>()
        {
            open.into.0.lock().unwrap().push(open.fields);
        }
    }
}

/// Ends this thread's capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

/// Captures the statement spans made on this thread (the test's runtime is single-threaded, so
/// every statement's span is made here) until the guard drops.
fn capture() -> (Spans, Capturing) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(Registry::default().with(CaptureLayer))
            .expect("no other global subscriber in the integration tests");
    });
    let spans = Spans::default();
    CAPTURING.with(|c| *c.borrow_mut() = Some(spans.clone()));
    (spans, Capturing)
}

fn field<'a>(span: &'a Fields, name: &str) -> Option<&'a str> {
    span.get(name).map(String::as_str)
}

/// The one span of the statement just run.
fn only(spans: &Spans) -> Fields {
    let mut closed = spans.take();
    assert_eq!(closed.len(), 1, "one statement, one span: {closed:#?}");
    closed.pop().unwrap()
}

/// The port and role a span names, checked against the server's own answer.
fn assert_ran_on(span: &Fields, ran_on: &ServerId, role: &str) {
    assert_eq!(field(span, "server.port"), Some(&*ran_on.port.to_string()));
    assert_eq!(field(span, "db.routing.role"), Some(role));
    assert_eq!(ran_on.in_recovery, role == "replica", "{span:#?}");
    assert_eq!(field(span, "db.system.name"), Some("postgresql"));
    assert!(field(span, "db.namespace").is_some(), "{span:#?}");
    assert!(field(span, "server.address").is_some(), "{span:#?}");
}

#[tokio::test]
async fn a_replica_read_has_a_span_naming_the_replica_it_ran_on() {
    let servers = servers().await;
    let pool = servers.pool(&unique("span-read"));
    let (spans, _guard) = capture();
    let ran_on = with_read_replica(true, async {
        let mut conn = pool.get().await.expect("a connection");
        diesel::sql_query("SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port")
            .get_result::<RanOn>(&mut conn)
            .await
            .expect("a read")
    })
    .await
    .id();
    let span = only(&spans);
    assert_ran_on(&span, &ran_on, "replica");
    let index = servers.replica_index(&ran_on).expect("a replica");
    assert_eq!(
        field(&span, "db.routing.replica"),
        Some(&*index.to_string())
    );
    assert_eq!(field(&span, "db.operation.name"), Some("SELECT"));
    assert_eq!(field(&span, "otel.name"), Some("SELECT"));
    assert_eq!(field(&span, "db.routing.reason"), Some("scope_replica"));
    assert_eq!(field(&span, "db.routing.attempt"), Some("1"));
    assert_eq!(field(&span, "db.routing.fallback"), None);
    assert_eq!(
        field(&span, "db.query.text"),
        None,
        "no text unless asked for"
    );
    assert_eq!(field(&span, "error.type"), None);
}

#[tokio::test]
async fn a_write_has_a_span_naming_the_primary_and_its_text_without_binds() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("span-write"))
        .record_query_text(true)
        .build()
        .expect("a pool");
    let (spans, _guard) = capture();
    let name = unique("span-product");
    let mut conn = pool.get().await.expect("a connection");
    let (in_recovery, port) = diesel::insert_into(products::table)
        .values((products::name.eq(&name), products::price_cents.eq(4242_i64)))
        .returning((pg_is_in_recovery(), inet_server_port()))
        .get_result::<(bool, i32)>(&mut conn)
        .await
        .expect("an insert");
    let span = only(&spans);
    assert_ran_on(&span, &ServerId { port, in_recovery }, "primary");
    assert_eq!(field(&span, "db.operation.name"), Some("INSERT"));
    assert_eq!(field(&span, "db.routing.reason"), Some("write"));
    assert_eq!(field(&span, "db.routing.replica"), None);
    let text = field(&span, "db.query.text").expect("the statement's text");
    assert!(text.starts_with("INSERT INTO \"products\""), "{text}");
    assert!(text.contains("$1"), "{text}");
    assert!(
        !text.contains(&name) && !text.contains("4242"),
        "bind values in {text}"
    );
}

#[tokio::test]
async fn a_read_no_replica_serves_has_a_span_of_the_fallback_to_the_primary() {
    let servers = servers().await;
    // Nothing listens on port 1: the replica's checkout fails, and the primary serves the read.
    let pool = RoutedPool::builder(servers.primary_url.clone())
        .replica("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2")
        .build()
        .expect("a pool");
    let (spans, _guard) = capture();
    let ran_on = with_read_replica(true, async {
        let mut conn = pool.get().await.expect("a connection");
        diesel::select((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(&mut conn)
            .await
            .expect("a read the primary serves")
    })
    .await;
    let span = only(&spans);
    assert_ran_on(
        &span,
        &ServerId {
            in_recovery: ran_on.0,
            port: ran_on.1,
        },
        "primary",
    );
    assert_eq!(field(&span, "db.routing.fallback"), Some("true"));
    assert_eq!(field(&span, "db.routing.attempt"), Some("2"));
    assert_eq!(field(&span, "db.routing.reason"), Some("fallback"));
}

#[tokio::test]
async fn failed_statements_have_their_error_type_on_the_span() {
    let servers = servers().await;
    let pool = servers.pool(&unique("span-error"));
    let (spans, _guard) = capture();
    let mut conn = pool.get().await.expect("a connection");
    // A unique violation: the server's SQLSTATE.
    let id = diesel::insert_into(products::table)
        .values((
            products::name.eq(unique("dup")),
            products::price_cents.eq(1_i64),
        ))
        .returning(products::id)
        .get_result::<i64>(&mut conn)
        .await
        .expect("an insert");
    let duplicate = diesel::insert_into(products::table)
        .values((
            products::id.eq(id),
            products::name.eq(unique("dup")),
            products::price_cents.eq(1_i64),
        ))
        .execute(&mut conn)
        .await;
    assert!(duplicate.is_err());
    let closed = spans.take();
    assert_eq!(closed.len(), 2, "{closed:#?}");
    assert_eq!(field(&closed[0], "error.type"), None);
    assert_eq!(field(&closed[1], "error.type"), Some("23505"));
    assert_eq!(field(&closed[1], "db.response.status_code"), Some("23505"));
    assert_eq!(field(&closed[1], "otel.status_code"), Some("ERROR"));
    assert_eq!(field(&closed[1], "db.routing.role"), Some("primary"));

    // A routing error: no replica can serve the read and fallback is off.
    let pool = RoutedPool::builder(servers.primary_url.clone())
        .replica("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2")
        .fallback_to_primary(false)
        .build()
        .expect("a pool");
    let result = with_read_replica(true, async {
        let mut conn = pool.get().await.expect("a connection");
        diesel::select(diesel::dsl::sql::<BigInt>("1"))
            .get_result::<i64>(&mut conn)
            .await
    })
    .await;
    let error = result.expect_err("no replica and no fallback");
    assert!(matches!(
        Error::from_diesel(&error),
        Some(Error::NoReplicaAvailable { .. })
    ));
    let span = only(&spans);
    assert_eq!(field(&span, "error.type"), Some("no_replica_available"));
    assert_eq!(field(&span, "otel.status_code"), Some("ERROR"));
}

#[tokio::test]
async fn statement_durations_are_recorded_by_server_role_and_outcome() {
    let servers = servers().await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    // A pool of its own: metric handles are registered on first use, under this recorder.
    let pool = servers.pool(&unique("durations"));
    for _ in 0..3 {
        let id = with_read_replica(true, async {
            let mut conn = pool.get().await.expect("a connection");
            diesel::select((pg_is_in_recovery(), inet_server_port()))
                .get_result::<(bool, i32)>(&mut conn)
                .await
                .expect("a read")
        })
        .await;
        assert!(id.0, "a replica served the read");
    }
    let mut conn = pool.get().await.expect("a connection");
    let failed = diesel::sql_query("SELECT 1 / 0 AS x")
        .execute(&mut conn)
        .await;
    assert!(failed.is_err());

    let mut replica_ok = 0;
    let mut primary_error = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if key.name() != "db.client.operation.duration" {
            continue;
        }
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        let DebugValue::Histogram(values) = value else {
            panic!("{key:?} is not a histogram");
        };
        assert!(
            values
                .iter()
                .all(|v| v.into_inner() > 0.0 && v.into_inner() < 60.0)
        );
        assert_eq!(label("db.system.name").as_deref(), Some("postgresql"));
        match (
            label("db.routing.role").as_deref(),
            label("outcome").as_deref(),
        ) {
            (Some("replica"), Some("ok")) => replica_ok += values.len(),
            (Some("primary"), Some("error")) => primary_error += values.len(),
            other => panic!("unexpected series {other:?}"),
        }
    }
    assert_eq!(replica_ok, 3);
    assert_eq!(primary_error, 1);
}
