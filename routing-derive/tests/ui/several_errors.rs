use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(true, "no", max_lag = "2s", false)]
#[read_replica]
struct ListOrders;

fn main() {}
