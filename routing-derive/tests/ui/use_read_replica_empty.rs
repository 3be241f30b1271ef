use routing_core::use_read_replica;

#[use_read_replica]
async fn list_orders() {}

fn main() {
    let _ = list_orders();
}
