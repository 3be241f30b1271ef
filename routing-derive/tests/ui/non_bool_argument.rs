use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(yes)]
struct ListOrders;

fn main() {}
