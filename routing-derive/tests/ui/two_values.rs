use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(true, false)]
struct ListOrders;

fn main() {}
