use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(false)]
#[read_replica(true)]
struct ListOrders;

fn main() {}
