//! The configuration files and command lines of Patroni and etcd.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::ClusterError;

/// Patroni's `loop_wait`: one HA cycle per second.
pub(crate) const LOOP_WAIT_SECS: u64 = 1;

/// The Patroni `scope`: the cluster's name in etcd.
const SCOPE: &str = "routing";

/// The DCS settings chosen with the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Patroni's `ttl` in seconds: how long a leader lock outlives its holder.
    pub(crate) ttl: u64,
    /// Patroni's `retry_timeout` in seconds.
    pub(crate) retry_timeout: u64,
    /// Patroni's `synchronous_mode`.
    pub(crate) synchronous_mode: bool,
}

/// The files and ports of one node.
#[derive(Debug)]
pub(crate) struct NodeFiles {
    /// The member name, `node0`, `node1`, ...; also the replication
    /// `application_name`.
    pub(crate) name: String,
    /// PostgreSQL's TCP port on 127.0.0.1.
    pub(crate) pg_port: u16,
    /// The REST API's TCP port on 127.0.0.1.
    pub(crate) rest_port: u16,
    /// The data directory (created by Patroni).
    pub(crate) data_dir: PathBuf,
    /// The Patroni configuration file.
    pub(crate) config: PathBuf,
    /// Patroni's log, which also receives PostgreSQL's.
    pub(crate) log: PathBuf,
    /// The pid of the running Patroni, for the watchdog.
    pub(crate) pid_file: PathBuf,
    /// The `.pgpass` file Patroni writes for replication and pg_rewind.
    pub(crate) pgpass: PathBuf,
}

impl NodeFiles {
    /// The files of node `index` under `root`.
    pub(crate) fn new(root: &Path, index: usize, pg_port: u16, rest_port: u16) -> Self {
        let name = format!("node{index}");
        Self {
            pg_port,
            rest_port,
            data_dir: root.join(&name),
            config: root.join(format!("{name}.yml")),
            log: root.join("log").join(format!("{name}.log")),
            pid_file: root.join(format!("{name}.patroni.pid")),
            pgpass: root.join(format!("{name}.pgpass")),
            name,
        }
    }

    /// The Patroni configuration of this node.
    pub(crate) fn patroni_yaml(
        &self,
        settings: Settings,
        etcd_client_port: u16,
        pg_bin_dir: &Path,
        socket_dir: &Path,
    ) -> Result<String, ClusterError> {
        let Settings {
            ttl,
            retry_timeout,
            synchronous_mode,
        } = settings;
        Ok(format!(
            "\
scope: {SCOPE}
namespace: /service/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd_client_port}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {LOOP_WAIT_SECS}
    retry_timeout: {retry_timeout}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {synchronous_mode}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_connections: 100
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
        wal_retrieve_retry_interval: 500ms
  initdb:
  - encoding: UTF8
  - locale: C
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  pgpass: {pgpass}
  use_unix_socket: false
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
  parameters:
    unix_socket_directories: {sockets}
    shared_buffers: 16MB
    fsync: 'off'
    jit: 'off'
    wal_receiver_status_interval: 1s
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
watchdog:
  mode: 'off'
",
            name = self.name,
            rest = self.rest_port,
            pg = self.pg_port,
            data_dir = yaml_path(&self.data_dir)?,
            bin_dir = yaml_path(pg_bin_dir)?,
            pgpass = yaml_path(&self.pgpass)?,
            // Patroni quotes the value for postgresql.conf itself.
            sockets = yaml_path(socket_dir)?,
        ))
    }
}

/// The ports and files of the etcd server.
#[derive(Debug)]
pub(crate) struct EtcdFiles {
    /// The client port (Patroni's `etcd3.hosts`).
    pub(crate) client_port: u16,
    /// The peer port (unused by a single member, but bound).
    pub(crate) peer_port: u16,
    /// The data directory (created by etcd).
    pub(crate) data_dir: PathBuf,
    /// Its log.
    pub(crate) log: PathBuf,
    /// Its pid, for the watchdog.
    pub(crate) pid_file: PathBuf,
}

impl EtcdFiles {
    /// The etcd files under `root`.
    pub(crate) fn new(root: &Path, client_port: u16, peer_port: u16) -> Self {
        Self {
            client_port,
            peer_port,
            data_dir: root.join("etcd"),
            log: root.join("log").join("etcd.log"),
            pid_file: root.join("etcd.pid"),
        }
    }

    /// The command line of a single-member etcd on loopback (v3 API).
    pub(crate) fn args(&self) -> Vec<OsString> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args: Vec<OsString> = vec!["--name".into(), "e0".into(), "--data-dir".into()];
        args.push(self.data_dir.clone().into());
        for (flag, value) in [
            ("--listen-client-urls", client.as_str()),
            ("--advertise-client-urls", &client),
            ("--listen-peer-urls", &peer),
            ("--initial-advertise-peer-urls", &peer),
            ("--initial-cluster", &format!("e0={peer}")),
            ("--initial-cluster-state", "new"),
            ("--logger", "zap"),
            ("--log-level", "warn"),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args
    }
}

/// `path` as a single-quoted YAML scalar.
fn yaml_path(path: &Path) -> Result<String, ClusterError> {
    Ok(yaml_quote(utf8(path)?))
}

/// `text` as a single-quoted YAML scalar.
fn yaml_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `path` as UTF-8, or an error naming it.
fn utf8(path: &Path) -> Result<&str, ClusterError> {
    path.to_str().ok_or_else(|| {
        ClusterError::io(
            format!("path {} is not valid UTF-8", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "non-UTF-8 path"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_names_every_port_and_keeps_the_timing_rule() {
        let node = NodeFiles::new(Path::new("/tmp/rp-x"), 1, 5001, 8001);
        let settings = Settings {
            ttl: 5,
            retry_timeout: 2,
            synchronous_mode: true,
        };
        let yaml = node
            .patroni_yaml(settings, 2379, Path::new("/pg/bin"), Path::new("/tmp/rp-x"))
            .unwrap();
        for expected in [
            "name: node1",
            "listen: 127.0.0.1:8001",
            "listen: 127.0.0.1:5001",
            "hosts: 127.0.0.1:2379",
            "ttl: 5",
            "retry_timeout: 2",
            "synchronous_mode: true",
            "data_dir: '/tmp/rp-x/node1'",
            "unix_socket_directories: '/tmp/rp-x'",
        ] {
            assert!(yaml.contains(expected), "{expected:?} missing from\n{yaml}");
        }
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(yaml_quote("it's"), "'it''s'");
    }
}
