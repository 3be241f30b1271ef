use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(true, "no", colour = "red", false)]
#[read_replica]
struct ListOrders;

fn main() {}
