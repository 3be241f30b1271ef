use routing_core::ReadReplicaControl;

#[derive(ReadReplicaControl)]
union ListOrders {
    id: u32,
}

fn main() {}
