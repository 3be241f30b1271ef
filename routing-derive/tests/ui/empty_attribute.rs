use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica]
struct ListOrders;

fn main() {}
