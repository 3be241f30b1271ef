// The suite again, every test body in a replica scope: see `with_router.rs`.
include!("lib.rs");
