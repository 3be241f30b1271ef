//! Macros for `routing-core`'s `ReadReplicaControl`, a handler's read-replica policy. Use
//! them through `routing_core`, which re-exports both:
//!
//! - `#[derive(ReadReplicaControl)]` for a handler type, with an optional
//!   `#[read_replica(false)]` (keep its reads on the primary) or `#[read_replica(true)]`
//!   (the default: reads may go to a replica);
//! - `#[use_read_replica(false)]` / `#[use_read_replica(true)]` for a fn handler, which gets a
//!   companion type of the same name for `ReadReplicaLayer::for_handler::<name>()`.
//!
//! Both take the same arguments, comma-separated: at most one `true` or `false` (may reads go
//! to a replica? default `true`) and at most one `max_lag = "<duration>"` (the handler's
//! staleness budget: `"500ms"`, `"2s"`, `"1.5m"`, `"1h"`, also `"us"`). Generated code names the
//! trait as
//! `::routing_core::__private::ReadReplicaControl`, so the user crate needs `routing-core` as
//! a direct dependency.

mod attr;
mod derive;
mod handler;

use proc_macro::TokenStream;

/// Implements `ReadReplicaControl` for a struct or an enum: reads of its requests may go to a
/// replica, unless the type says `#[read_replica(false)]`.
///
/// ```
/// use routing_core::ReadReplicaControl;
///
/// #[derive(ReadReplicaControl)]
/// struct ListProducts;
///
/// #[derive(ReadReplicaControl)]
/// #[read_replica(false)]
/// struct ListOrders<'a, T: Clone> {
///     filter: &'a [T],
/// }
///
/// assert!(ListProducts::USE_READ_REPLICA);
/// assert!(!<ListOrders<'static, u32>>::USE_READ_REPLICA);
/// ```
///
/// `#[read_replica(..)]` takes one `true` or `false` (`#[read_replica(true)]` is the same as no
/// attribute) and/or `max_lag = "2s"`, the handler's staleness budget: its reads go only to
/// replicas known to lag less.
///
/// ```
/// use routing_core::ReadReplicaControl;
///
/// #[derive(ReadReplicaControl)]
/// #[read_replica(max_lag = "2s")]
/// struct SalesReport;
///
/// #[derive(ReadReplicaControl)]
/// #[read_replica(true, max_lag = "500ms")]
/// struct Dashboard;
///
/// assert_eq!(SalesReport::MAX_LAG, Some(std::time::Duration::from_secs(2)));
/// assert_eq!(Dashboard::MAX_LAG, Some(std::time::Duration::from_millis(500)));
/// ```
///
/// Anything else (an unknown key, a value of the wrong type, a second bool or key, a second
/// attribute) is a compile error.
#[proc_macro_derive(ReadReplicaControl, attributes(read_replica))]
pub fn derive_read_replica_control(input: TokenStream) -> TokenStream {
    derive::expand(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Gives a fn handler a read-replica policy, like `#[derive(ReadReplicaControl)]` does for a
/// type.
///
/// The fn is left as it is; the attribute adds a type with the same name and visibility that
/// implements `ReadReplicaControl`, to pass to `ReadReplicaLayer::for_handler::<name>()`. It
/// is a braced struct, in the type namespace only, so it does not clash with the fn.
///
/// ```
/// use routing_core::{ReadReplicaControl, use_read_replica};
///
/// #[use_read_replica(false)]
/// async fn create_order() -> &'static str {
///     "created"
/// }
///
/// assert!(!<create_order as ReadReplicaControl>::USE_READ_REPLICA);
/// # let _ = create_order();
/// ```
///
/// The arguments are those of `#[read_replica(..)]`: one `true` or `false` and/or
/// `max_lag = "<duration>"`; at least one is required.
#[proc_macro_attribute]
pub fn use_read_replica(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    handler::expand(args.into(), item.clone())
        .unwrap_or_else(|error| {
            // Keep the item, so that its uses do not fail as well.
            let error = error.into_compile_error();
            quote::quote!(#item #error)
        })
        .into()
}
