use routing_core::use_read_replica;

#[use_read_replica(false)]
struct ListOrders;

fn main() {}
