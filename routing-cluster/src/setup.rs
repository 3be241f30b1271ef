//! Creating the data directories and their configuration.

use std::path::Path;

use crate::ClusterError;
use crate::server::{Context, Server, append};

/// How the primary is configured (the replicas copy its configuration).
pub(crate) struct Primary {
    /// The standbys it serves.
    pub(crate) replicas: usize,
    /// TCP logins of every user but `postgres` need their password.
    pub(crate) password_auth: bool,
    /// Each server's `max_connections`.
    pub(crate) max_connections: u32,
}

/// Runs `initdb` for the primary and configures it as `options` say.
pub(crate) async fn init_primary(
    primary: &Server,
    ctx: &Context,
    options: Primary,
) -> Result<(), ClusterError> {
    let Primary {
        replicas,
        password_auth,
        max_connections,
    } = options;
    ctx.command("initdb")
        .arg("-D")
        .arg(&primary.data_dir)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
        .arg("--no-sync")
        .output()
        .await?;
    // Each pg_basebackup -X stream uses two WAL senders, and they run in
    // parallel, so leave room for all of them plus two spare.
    let senders = replicas.saturating_mul(2).saturating_add(2);
    // pg_stat_statements, when installed, lets tests count what each server served.
    let preload = if ctx.bins.has_library("pg_stat_statements") {
        "shared_preload_libraries = 'pg_stat_statements'\n"
    } else {
        ""
    };
    primary
        .append_config(&format!(
            "\n# added by routing-cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {sockets}\n\
             max_connections = {max_connections}\n\
             shared_buffers = 16MB\n\
             wal_level = replica\n\
             max_wal_senders = {senders}\n\
             max_replication_slots = {senders}\n\
             wal_keep_size = 128MB\n\
             hot_standby = on\n\
             fsync = off\n\
             full_page_writes = off\n\
             jit = off\n\
             wal_receiver_status_interval = 1s\n\
             wal_retrieve_retry_interval = 500ms\n\
             cluster_name = '{name}'\n\
             {preload}",
            sockets = quote(&ctx.socket_dir)?,
            name = primary.cluster_name,
        ))
        .await?;
    let hba = primary.data_dir.join("pg_hba.conf");
    append(
        &hba,
        "\n# added by routing-cluster\n\
         host all all 127.0.0.1/32 trust\n\
         host replication all 127.0.0.1/32 trust\n",
    )
    .await?;
    if password_auth {
        // The first matching line wins: these must come before initdb's trust lines. The
        // replicas' copies come from the primary's.
        let context = || format!("cannot rewrite {}", hba.display());
        let existing = tokio::fs::read_to_string(&hba)
            .await
            .map_err(|err| ClusterError::io(context(), err))?;
        let rewritten = format!(
            "# passwords on TCP but for postgres, added by routing-cluster\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all postgres ::1/128 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n\n\
             {existing}"
        );
        tokio::fs::write(&hba, rewritten)
            .await
            .map_err(|err| ClusterError::io(context(), err))?;
    }
    Ok(())
}

/// Copies the primary on `primary_port` into the replica's data directory
/// with `pg_basebackup -R`, which makes it a standby of the primary.
pub(crate) async fn clone_replica(
    replica: &Server,
    ctx: &Context,
    primary_port: u16,
) -> Result<(), ClusterError> {
    ctx.command("pg_basebackup")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            "postgres",
        ])
        .arg("-D")
        .arg(&replica.data_dir)
        .args(["-R", "-X", "stream", "-c", "fast"])
        .output()
        .await?;
    replica
        .append_config(&format!(
            "\n# added by routing-cluster for this replica\ncluster_name = '{}'\n",
            replica.cluster_name
        ))
        .await
}

/// `path` as a quoted configuration value.
fn quote(path: &Path) -> Result<String, ClusterError> {
    let text = path.to_str().ok_or_else(|| {
        ClusterError::io(
            format!("path {} is not valid UTF-8", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "non-UTF-8 path"),
        )
    })?;
    Ok(format!("'{}'", text.replace('\'', "''")))
}
