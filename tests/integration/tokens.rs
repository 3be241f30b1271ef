//! Causal tokens from clients are untrusted input: a token that claims a WAL position the
//! primary has not reached, or a time in the future, is ignored; waiting reads are bounded per
//! pool; a layer with a signing key accepts only the tokens it signed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderName, Method, Request};
use axum::routing::{get, post};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_core::{
    CausalToken, ReadReplicaLayer, ReadYourWrites, RoutedPool, with_causal_token, with_read_replica,
};
use routing_fixtures::products;
use routing_tests::{pg_is_in_recovery, servers, unique, where_ran};
use tower::ServiceExt;

use crate::support::{insert_product, private_cluster};

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_beyond_the_primary_is_ignored_not_waited_for() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("forged_lsn"))
        .max_size(2)
        .read_your_writes(ReadYourWrites::Lsn {
            wait: Duration::from_secs(3),
        })
        .build()
        .unwrap();
    let forged: CausalToken = format!("FFFFFFFF/FFFFFFFF@{}", now_ms()).parse().unwrap();
    // Four forged reads at once, and an ordinary one among them.
    let forged_reads: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(with_causal_token(forged, async move {
                let mut conn = pool.get().await.unwrap();
                with_read_replica(true, where_ran(&mut conn)).await
            }))
        })
        .collect();
    let began = Instant::now();
    let mut conn = pool.get().await.unwrap();
    let ordinary = with_read_replica(true, where_ran(&mut conn)).await;
    let ordinary_took = began.elapsed();
    assert!(servers.is_replica(&ordinary), "{ordinary:?}");
    for read in forged_reads {
        let id = read.await.unwrap();
        // Ignored, not honoured: a replica answers, as for any read.
        assert!(servers.is_replica(&id), "{id:?}");
    }
    let took = began.elapsed();
    eprintln!("forged tokens: ordinary read {ordinary_took:?}, all five reads {took:?}");
    assert_eq!(pool.status().forged_tokens, 4, "{}", pool.status());
    assert!(
        took < Duration::from_secs(3),
        "a forged token was waited for: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_future_does_not_pin_reads_to_the_primary() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("forged_time"))
        .read_your_writes(ReadYourWrites::TimeWindow(Duration::from_secs(60)))
        .build()
        .unwrap();
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    let forged: CausalToken = format!("0/0@{}", now_ms() + ten_years).parse().unwrap();
    let mut conn = pool.get().await.unwrap();
    let id = with_causal_token(forged, with_read_replica(true, where_ran(&mut conn))).await;
    assert!(servers.is_replica(&id), "{id:?}");
    assert_eq!(pool.status().forged_tokens, 1);
    // A token of a real write, just made, still sends reads to the primary.
    let mut writer = pool.get().await.unwrap();
    insert_product(&mut writer, &unique("window_write")).await;
    let honest = writer.causal_token().await.unwrap().unwrap();
    let mut conn = pool.get().await.unwrap();
    let id = with_causal_token(honest, with_read_replica(true, where_ran(&mut conn))).await;
    assert!(servers.is_primary(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_token_from_another_instance_is_checked_and_kept_and_waits_are_bounded() {
    let Some(cluster) = private_cluster("honest_token_bounded_waits").await else {
        return;
    };
    let builder = || {
        RoutedPool::builder(cluster.primary_url())
            .replicas(cluster.replica_urls())
            .read_your_writes(ReadYourWrites::Lsn {
                wait: Duration::from_secs(5),
            })
    };
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    // Another application instance wrote and made the token.
    let other = builder().build().unwrap();
    let mut writer = other.get().await.unwrap();
    let (id, _) = insert_product(&mut writer, &unique("other_instance")).await;
    let token = writer.causal_token().await.unwrap().unwrap();
    // This instance has not seen the primary that far yet: it asks once, and keeps the token.
    let pool = builder().max_causal_waits(1).build().unwrap();
    let began = Instant::now();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(with_causal_token(token, async move {
                let mut conn = pool.get().await.unwrap();
                let row = with_read_replica(true, async {
                    products::table
                        .find(id)
                        .select(pg_is_in_recovery())
                        .get_result::<bool>(&mut conn)
                        .await
                })
                .await;
                (row, began.elapsed())
            }))
        })
        .collect();
    let mut times = Vec::new();
    for reader in readers {
        let (row, took) = reader.await.unwrap();
        assert_eq!(row, Ok(false), "the write was seen, on the primary");
        times.push(took);
    }
    times.sort();
    eprintln!("honest token, one causal wait allowed: reads done after {times:?}");
    assert_eq!(pool.status().forged_tokens, 0);
    // One read waited for a replica; the other two did not queue behind it.
    assert!(times[1] < Duration::from_secs(3), "{times:?}");
    assert!(times[2] >= Duration::from_secs(4), "{times:?}");
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
}

async fn write(State(pool): State<RoutedPool>) -> String {
    let mut conn = pool.get().await.unwrap();
    let (id, _) = insert_product(&mut conn, &unique("signed")).await;
    id.to_string()
}

async fn read(State(pool): State<RoutedPool>, Path(id): Path<i64>) -> String {
    let mut conn = pool.get().await.unwrap();
    let found = products::table
        .find(id)
        .select(pg_is_in_recovery())
        .get_result::<bool>(&mut conn)
        .await
        .optional()
        .unwrap();
    format!("{found:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_layer_accepts_only_the_tokens_it_signed() {
    let Some(cluster) = private_cluster("signed_tokens").await else {
        return;
    };
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .unwrap();
    let header = HeaderName::from_static("x-read-after");
    let layer = |key: &'static [u8]| {
        ReadReplicaLayer::allow_replica()
            .causal_header(header.clone())
            .signing_key(key)
    };
    let app = |key| {
        Router::new()
            .route("/write", post(write))
            .route("/read/{id}", get(read))
            .layer(layer(key))
            .with_state(pool.clone())
    };
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri("/write")
        .body(Body::empty())
        .unwrap();
    let response = app(b"deployment key").oneshot(request).await.unwrap();
    let signed = response.headers()[&header].to_str().unwrap().to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    let id = String::from_utf8(bytes.to_vec()).unwrap();
    let (token, _) = signed.rsplit_once('.').expect("a signed token");
    let get = |app: Router, value: String| {
        let request = Request::builder()
            .uri(format!("/read/{id}"))
            .header(&header, value)
            .body(Body::empty())
            .unwrap();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    // Its own signed token: the read sees the write, on the primary.
    assert_eq!(
        get(app(b"deployment key"), signed.clone()).await,
        "Some(false)"
    );
    // The same token unsigned, or signed by another deployment: ignored, a lagging replica
    // answers without the row.
    assert_eq!(get(app(b"deployment key"), token.to_owned()).await, "None");
    assert_eq!(get(app(b"another key"), signed).await, "None");
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
}
