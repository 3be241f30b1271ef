use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(0)]
struct ListOrders;

fn main() {}
