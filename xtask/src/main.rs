//! Maintenance tasks for this workspace, run as `cargo run -p xtask -- <task>`.
//!
//! * `classifier-data --database-url postgres://...`: regenerates the
//!   statement classifier's catalog-derived data files
//!   (`routing-core/src/classify/data/`) from a PostgreSQL server, by running
//!   the query in each file's header. `--check` changes nothing and fails if
//!   a file would change.

mod classifier_data;

use std::process::ExitCode;

use clap::Parser;

/// Maintenance tasks for this workspace.
#[derive(Debug, Parser)]
#[command(name = "xtask")]
enum Task {
    /// Regenerate the classifier's catalog-derived data files
    /// (routing-core/src/classify/data) from a PostgreSQL server.
    ClassifierData(classifier_data::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match Task::parse() {
        Task::ClassifierData(args) => match classifier_data::run(args).await {
            Ok(classifier_data::Outcome::UpToDate) => ExitCode::SUCCESS,
            Ok(classifier_data::Outcome::Stale) => ExitCode::from(1),
            Err(error) => {
                eprintln!("xtask classifier-data: {error}");
                ExitCode::from(2)
            }
        },
    }
}
