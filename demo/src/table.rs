//! Prints the workload's requests and where each of their queries ran.

use std::collections::BTreeMap;

use crate::script::Row;

/// Prints one line per query, then the number of queries each server answered. `name` names a
/// server from its port and `pg_is_in_recovery()`.
pub(crate) fn print(rows: &[Row], name: &dyn Fn(i32, bool) -> String) {
    println!(
        "{:>3}  {:<26} {:<20} {:<20} server (as it answered)",
        "#", "request", "handler", "query"
    );
    println!("{}", "-".repeat(100));
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for (index, row) in rows.iter().enumerate() {
        let request = format!("{} {}", row.method, row.path);
        for (i, query) in row.queries.iter().enumerate() {
            let server = match (query.port, query.in_recovery) {
                (Some(port), Some(in_recovery)) => name(port, in_recovery),
                _ => "(no row to ask)".to_owned(),
            };
            *totals.entry(server.clone()).or_default() += 1;
            if i == 0 {
                println!(
                    "{:>3}  {:<26} {:<20} {:<20} {server}",
                    index + 1,
                    request,
                    row.handler,
                    query.label
                );
            } else {
                println!(
                    "{:>3}  {:<26} {:<20} {:<20} {server}",
                    "", "", "", query.label
                );
            }
        }
    }
    println!("{}", "-".repeat(100));
    println!("queries per server:");
    for (server, count) in totals {
        println!("  {server:<32} {count}");
    }
}
