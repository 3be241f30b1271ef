use routing_core::use_read_replica;

#[use_read_replica(no)]
async fn list_orders() {}

fn main() {}
