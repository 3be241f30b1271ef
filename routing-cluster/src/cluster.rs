//! The cluster: a primary and its replicas in one temporary directory.

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Instant;

use tempfile::TempDir;

use crate::binaries::PgBinaries;
use crate::command::{RunAs, ServerCommand, output_tail};
use crate::pgbouncer::Bouncers;
use crate::server::{Context, Server};
use crate::signals;
use crate::tls::Tls;
use crate::watchdog::Watchdog;
use crate::{ClusterBuilder, ClusterError, setup};

/// A throwaway PostgreSQL primary with streaming hot-standby replicas.
///
/// Everything lives in one directory under `/tmp` (see
/// [`LocalCluster::data_dir`]). Dropping the cluster stops every server and
/// removes the directory, also while a test unwinds from a panic; if the
/// process dies without running `Drop`, a watchdog process does the same.
pub struct LocalCluster {
    pub(crate) ctx: Context,
    pub(crate) primary: Server,
    pub(crate) replicas: Vec<Server>,
    /// The certificates, with TLS on.
    pub(crate) tls: Option<Tls>,
    /// The PgBouncers, when asked for.
    pub(crate) bouncers: Option<Bouncers>,
    dir: Option<TempDir>,
    watchdog: Option<Watchdog>,
}

impl LocalCluster {
    /// Options for a cluster: replica count, binary directory, timeout.
    #[must_use = "the builder starts nothing until `.start().await`"]
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a primary with two replicas.
    ///
    /// # Errors
    ///
    /// See [`ClusterBuilder::start`].
    pub async fn start() -> Result<Self, ClusterError> {
        Self::builder().start().await
    }

    /// Does the work of [`ClusterBuilder::start`].
    pub(crate) async fn launch(options: ClusterBuilder) -> Result<Self, ClusterError> {
        let began = Instant::now();
        let bins = match &options.bin_dir {
            Some(dir) => PgBinaries::in_dir(dir.clone())?,
            None => PgBinaries::find()?,
        };
        let run_as = RunAs::detect().await?;
        let dir = tempfile::Builder::new()
            .prefix("rc-")
            .tempdir_in("/tmp")
            .map_err(|err| ClusterError::io("cannot create a directory under /tmp", err))?;
        let root = dir.path().to_path_buf();
        set_mode(&root, 0o755)?;

        let primary = Server::new("primary".to_owned(), "primary", &root);
        let replicas: Vec<Server> = (0..options.replicas)
            .map(|index| {
                Server::new(
                    format!("replica {index}"),
                    &format!("replica{index}"),
                    &root,
                )
            })
            .collect();
        let socket_dir = root.join("sock");
        for shared in [&socket_dir, &root.join("log")] {
            make_dir(shared, 0o755, run_as)?;
        }
        let data_dirs: Vec<PathBuf> = std::iter::once(&primary)
            .chain(&replicas)
            .map(|server| server.data_dir.clone())
            .collect();
        for data_dir in &data_dirs {
            make_dir(data_dir, 0o700, run_as)?;
        }
        let watchdog = Watchdog::spawn(&root, &bins.program("pg_ctl"), run_as, &data_dirs)?;
        let tls = if options.tls {
            Some(Tls::create(&root)?)
        } else {
            None
        };

        // From here on, an early return drops `cluster`, which cleans up.
        let mut cluster = Self {
            ctx: Context {
                bins,
                run_as,
                root,
                socket_dir,
                timeout: options.timeout,
            },
            primary,
            replicas,
            tls,
            bouncers: None,
            dir: Some(dir),
            watchdog: Some(watchdog),
        };
        cluster.boot(&options).await?;
        if let Some(mode) = options.pgbouncer {
            let pooling = crate::pgbouncer::Pooling {
                mode,
                size: options.pgbouncer_pool_size,
            };
            cluster.start_bouncers(pooling).await?;
        }
        tracing::info!(
            dir = %cluster.ctx.root.display(),
            primary_port = cluster.primary.port,
            replicas = cluster.replicas.len(),
            elapsed_ms = began.elapsed().as_millis(),
            "local cluster started"
        );
        Ok(cluster)
    }

    /// Creates and starts the primary, then every replica in parallel.
    async fn boot(&mut self, options: &ClusterBuilder) -> Result<(), ClusterError> {
        let ctx = &self.ctx;
        let primary = setup::Primary {
            replicas: self.replicas.len(),
            password_auth: options.password_auth,
            max_connections: options.max_connections,
        };
        setup::init_primary(&self.primary, ctx, primary).await?;
        if let Some(tls) = &self.tls {
            tls.configure_primary(&self.primary, ctx, options.tls_only)
                .await?;
        }
        self.primary.start_on_free_port(ctx).await?;
        self.primary.state.get_mut().running = true;

        let primary_port = self.primary.port;
        let replica_starts = self.replicas.iter_mut().map(|replica| async move {
            setup::clone_replica(replica, ctx, primary_port).await?;
            replica.start_on_free_port(ctx).await?;
            replica.state.get_mut().running = true;
            Ok::<_, ClusterError>(())
        });
        for result in futures_util::future::join_all(replica_starts).await {
            result?;
        }
        for replica in &self.replicas {
            replica.wait_streaming(ctx, primary_port).await?;
        }
        Ok(())
    }

    /// The primary's URL, `postgres://postgres@127.0.0.1:{port}/postgres`; with
    /// [TLS](ClusterBuilder::tls) on,
    /// `postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}`.
    #[must_use]
    pub fn primary_url(&self) -> String {
        self.client_url(self.primary.port)
    }

    /// The URL of every replica, by index, in the form of [`LocalCluster::primary_url`].
    #[must_use]
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|replica| self.client_url(replica.port))
            .collect()
    }

    /// The URL of replica `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`LocalCluster::replica_count`].
    #[must_use]
    pub fn replica_url(&self, index: usize) -> String {
        self.client_url(self.replica_or_panic(index).port)
    }

    /// The primary's TCP port on 127.0.0.1.
    #[must_use]
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// The TCP port of replica `index` on 127.0.0.1.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`LocalCluster::replica_count`].
    #[must_use]
    pub fn replica_port(&self, index: usize) -> u16 {
        self.replica_or_panic(index).port
    }

    /// The number of replicas, running or not.
    #[must_use]
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// The cluster directory: data directories, logs (`log/*.log`), sockets.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.ctx.root
    }

    /// The directory of the PostgreSQL programs in use.
    #[must_use]
    pub fn bin_dir(&self) -> &Path {
        self.ctx.bins.dir()
    }

    /// Stops every bouncer and server and removes the directory, like `Drop` but
    /// reporting failures. Blocks the thread until done.
    ///
    /// # Errors
    ///
    /// The first failure among stopping the servers and removing the
    /// directory; every step is attempted regardless.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.shutdown()
    }

    /// The replica `index`, or [`ClusterError::NoSuchReplica`].
    pub(crate) fn replica(&self, index: usize) -> Result<&Server, ClusterError> {
        self.replicas.get(index).ok_or(ClusterError::NoSuchReplica {
            index,
            count: self.replicas.len(),
        })
    }

    /// The replica `index`, panicking with a clear message when out of range.
    fn replica_or_panic(&self, index: usize) -> &Server {
        match self.replica(index) {
            Ok(replica) => replica,
            Err(err) => panic!("{err}"),
        }
    }

    /// Stops all servers (`-m immediate`, after waking frozen ones) and
    /// removes the directory; blocking, needs no runtime, never panics.
    fn shutdown(&mut self) -> Result<(), ClusterError> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        // Bouncers first: they would keep reconnecting to the servers.
        let mut errors = self.stop_bouncers();
        let mut stopping: Vec<(ServerCommand, Child)> = Vec::new();
        for server in self.replicas.iter().chain(std::iter::once(&self.primary)) {
            let postmaster = match signals::postmaster_pid(&server.data_dir) {
                Ok(Some(pid)) => pid,
                Ok(None) => continue,
                Err(err) => {
                    errors.push(err);
                    continue;
                }
            };
            // A stopped process would not act on the shutdown signal.
            let mut tree = signals::descendants(postmaster);
            tree.reverse();
            tree.push(postmaster);
            signals::send_blocking("CONT", &tree);
            let command = self
                .ctx
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&server.data_dir)
                .args(["-m", "immediate", "-w", "-t", "30"]);
            match command.std_command().spawn() {
                Ok(child) => stopping.push((command, child)),
                Err(err) => errors.push(ClusterError::Command {
                    command: command.to_string(),
                    status: format!("could not run: {err}"),
                    output: String::new(),
                }),
            }
        }
        for (command, child) in stopping {
            match child.wait_with_output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => errors.push(ClusterError::Command {
                    command: command.to_string(),
                    status: output.status.to_string(),
                    output: output_tail(&output),
                }),
                Err(err) => errors.push(ClusterError::Command {
                    command: command.to_string(),
                    status: format!("could not wait: {err}"),
                    output: String::new(),
                }),
            }
        }
        let path = dir.path().display().to_string();
        match dir.close() {
            Ok(()) => {
                if let Some(watchdog) = self.watchdog.take() {
                    watchdog.dismiss();
                }
            }
            // Dropping the watchdog closes its pipe: it retries the cleanup.
            Err(err) => errors.push(ClusterError::io(format!("cannot remove {path}"), err)),
        }
        match errors.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::warn!("cleaning up the local cluster: {err}");
        }
    }
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.ctx.root)
            .field("primary_port", &self.primary.port)
            .field(
                "replica_ports",
                &self.replicas.iter().map(|r| r.port).collect::<Vec<_>>(),
            )
            .field("tls", &self.tls.is_some())
            .field(
                "bouncer_ports",
                &self
                    .bouncers
                    .iter()
                    .flat_map(|b| b.all().map(|bouncer| bouncer.port))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Creates `path` with `mode` and gives it to the server user.
fn make_dir(path: &Path, mode: u32, run_as: RunAs) -> Result<(), ClusterError> {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|err| ClusterError::io(format!("cannot create {}", path.display()), err))?;
    set_mode(path, mode)?;
    run_as.hand_over(path)
}

/// Sets the permission bits of `path` (the umask does not apply).
fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| ClusterError::io(format!("cannot set the mode of {}", path.display()), err))
}
