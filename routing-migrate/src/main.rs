//! `routing-migrate`: runs diesel migrations on the primary of a PostgreSQL setup with read
//! replicas, and refuses a replica or a standby. See `routing-migrate --help` and the crate docs
//! for the commands, the environment and the exit codes.

use std::io::Write;

fn main() {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            // Exit code 1: an operation failed.
            std::process::exit(1);
        }
    };
    let vars = |name: &str| std::env::var(name).ok();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let code = runtime.block_on(routing_migrate::run_cli(
        std::env::args_os(),
        &vars,
        &mut out,
        &mut err,
    ));
    let _ = out.flush();
    let _ = err.flush();
    // Close the connection and finish blocking tasks before exiting.
    drop(runtime);
    std::process::exit(code);
}
