use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
struct ListOrders {
    #[read_replica(false)]
    id: u32,
}

fn main() {}
