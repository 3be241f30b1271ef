use routing_core::use_read_replica;

struct Orders;

impl Orders {
    #[use_read_replica(false)]
    async fn list(&self) {}
}

fn main() {
    let _ = Orders.list();
}
