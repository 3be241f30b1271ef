use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
#[read_replica(max_lag = "1s", max_lag = "2s")]
struct SalesReport;

fn main() {}
