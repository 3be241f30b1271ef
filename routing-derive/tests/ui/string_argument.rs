use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica("no")]
struct ListOrders;

fn main() {}
