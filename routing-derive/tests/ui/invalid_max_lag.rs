use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(max_lag = "2 seconds")]
struct SalesReport;

fn main() {}
