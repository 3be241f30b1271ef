//! The macros through `routing_core`, as users see them.

use routing_core::ReadReplicaControl;

/// `T::USE_READ_REPLICA`, read at run time through a generic bound, as the layer does.
fn policy<T: ReadReplicaControl>() -> bool {
    T::USE_READ_REPLICA
}

fn request() -> http::request::Parts {
    http::Request::builder().body(()).unwrap().into_parts().0
}

#[derive(ReadReplicaControl)]
struct Unannotated;

#[derive(ReadReplicaControl)]
#[read_replica(false)]
struct Primary;

#[derive(ReadReplicaControl)]
#[read_replica(true)]
struct Replica;

#[test]
fn default_is_true() {
    assert!(policy::<Unannotated>());
}

#[test]
fn explicit_values() {
    assert!(!policy::<Primary>());
    assert!(policy::<Replica>());
}

#[test]
fn use_read_replica_returns_the_const_by_default() {
    let request = request();
    assert!(Unannotated::use_read_replica(&request));
    assert!(!Primary::use_read_replica(&request));
    assert!(Replica::use_read_replica(&request));
}

#[allow(dead_code)]
#[derive(ReadReplicaControl)]
#[read_replica(false)]
struct Generic<'a, T: Clone + 'a, const N: usize>
where
    T: Send,
{
    items: &'a [T; N],
}

#[test]
fn generics() {
    assert!(!policy::<Generic<'static, String, 3>>());
    assert!(!<Generic<'_, u8, 0> as ReadReplicaControl>::use_read_replica(&request()));
}

#[allow(dead_code)]
#[derive(ReadReplicaControl)]
#[read_replica(false)]
enum Action {
    List,
    Show(u32),
}

#[allow(dead_code)]
#[derive(ReadReplicaControl)]
struct Tuple(u32, String);

#[test]
fn enums_and_tuple_structs() {
    assert!(!policy::<Action>());
    assert!(policy::<Tuple>());
}

/// Handlers as fns: the attribute, imported next to the derive. Public, so that the crate's
/// `missing_docs` and `missing_debug_implementations` lints see the companion types.
pub mod handlers {
    use routing_core::{ReadReplicaControl, use_read_replica};

    #[derive(ReadReplicaControl)]
    #[read_replica(false)]
    pub(crate) struct Checkout;

    /// Creates an order.
    #[use_read_replica(false)]
    pub(crate) async fn create_order(id: u32) -> String {
        format!("order {id}")
    }

    #[use_read_replica(true)]
    pub(crate) async fn list_orders() -> Vec<u32> {
        vec![1, 2]
    }

    /// A handler that is not async.
    #[use_read_replica(false)]
    pub fn sync_handler() -> u8 {
        7
    }
}

/// Runs a future that never waits.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the handler waited"),
    }
}

#[test]
fn fn_handlers() {
    use handlers::{Checkout, create_order, list_orders, sync_handler};

    // The fns are still fns.
    assert_eq!(block_on(create_order(4)), "order 4");
    assert_eq!(block_on(list_orders()), [1, 2]);
    assert_eq!(sync_handler(), 7);

    // And their names are types too.
    assert!(!policy::<create_order>());
    assert!(policy::<list_orders>());
    assert!(!<sync_handler as ReadReplicaControl>::use_read_replica(
        &request()
    ));
    assert!(!policy::<Checkout>());
    assert_eq!(format!("{:?}", create_order {}), "create_order");
}

#[derive(ReadReplicaControl)]
#[read_replica(max_lag = "2s")]
struct SalesReport;

#[derive(ReadReplicaControl)]
#[read_replica(false, max_lag = "1.5m")]
struct Strict;

#[routing_core::use_read_replica(true, max_lag = "250ms")]
async fn recent_activity() -> u8 {
    0
}

#[test]
fn max_lag_is_a_staleness_budget() {
    use std::time::Duration;
    assert!(policy::<SalesReport>());
    assert_eq!(SalesReport::MAX_LAG, Some(Duration::from_secs(2)));
    assert_eq!(
        <SalesReport as ReadReplicaControl>::max_lag(&request()),
        Some(Duration::from_secs(2))
    );
    assert!(!policy::<Strict>());
    assert_eq!(Strict::MAX_LAG, Some(Duration::from_secs(90)));
    assert_eq!(
        <recent_activity as ReadReplicaControl>::MAX_LAG,
        Some(Duration::from_millis(250))
    );
    assert_eq!(block_on(recent_activity()), 0);
    // No key: the pool's bound.
    assert_eq!(<handlers::Checkout as ReadReplicaControl>::MAX_LAG, None);
}
