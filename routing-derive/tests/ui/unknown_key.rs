use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(foo = true)]
struct ListOrders;

fn main() {}
