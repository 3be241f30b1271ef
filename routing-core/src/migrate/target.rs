//! Whether a migration target designates the same server as a read replica.

use tokio_postgres::config::Host;

use crate::error::{BuildError, Error};
use crate::url::DatabaseUrl;

/// A validated connection string and the endpoints it connects to.
pub(super) struct Server {
    pub(super) url: DatabaseUrl,
}

impl Server {
    /// Validates `url`; `what` names it in the error ("primary", "replica 0").
    pub(super) fn parse(what: &str, url: &str) -> Result<Server, Error> {
        let parsed =
            DatabaseUrl::parse(url).map_err(|source| BuildError::invalid_url(what, url, source))?;
        Ok(Server { url: parsed })
    }

    fn config(&self) -> &tokio_postgres::Config {
        self.url.config()
    }
}

/// Refuses `target` when it designates the same server as one of `replicas`.
pub(super) fn refuse_replicas(target: &Server, replicas: &[Server]) -> Result<(), Error> {
    match replicas
        .iter()
        .position(|replica| same_server(target, replica))
    {
        Some(index) => Err(Error::TargetIsReplica {
            url: target.url.redacted().clone(),
            replica_index: index,
            replica: replicas[index].url.redacted().clone(),
        }),
        None => Ok(()),
    }
}

/// Whether two connection strings designate the same server: equal strings, or a shared
/// host-and-port endpoint and the same database when both name one.
///
/// Errs on the side of "the same": any shared endpoint counts (a multi-host target could reach
/// it), and the loopback names `localhost`, `127.0.0.1` and `::1` are one host.
fn same_server(a: &Server, b: &Server) -> bool {
    if a.url.secret().trim() == b.url.secret().trim() {
        return true;
    }
    let b_endpoints = endpoints(b.config());
    let shared = endpoints(a.config())
        .iter()
        .any(|endpoint| b_endpoints.contains(endpoint));
    let same_database = match (a.config().get_dbname(), b.config().get_dbname()) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    shared && same_database
}

/// The `(host, port)` endpoints a configuration can connect to, hosts normalized.
fn endpoints(config: &tokio_postgres::Config) -> Vec<(String, u16)> {
    let ports = config.get_ports();
    let port = |index: usize| match ports {
        [] => 5432,
        [only] => *only,
        many => many.get(index).copied().unwrap_or(5432),
    };
    let hosts = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| (host_key(host), port(index)));
    let addrs = config
        .get_hostaddrs()
        .iter()
        .enumerate()
        .map(|(index, addr)| (tcp_key(&addr.to_string()), port(index)));
    hosts.chain(addrs).collect()
}

fn host_key(host: &Host) -> String {
    match host {
        Host::Tcp(name) => tcp_key(name),
        #[cfg(unix)]
        Host::Unix(path) => format!("unix:{}", path.display()),
    }
}

fn tcp_key(name: &str) -> String {
    let name = name.trim().trim_start_matches('[').trim_end_matches(']');
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match name.as_str() {
        "localhost" | "127.0.0.1" | "::1" => "tcp:loopback".to_owned(),
        _ => format!("tcp:{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(url: &str) -> Server {
        Server::parse("test", url).unwrap()
    }

    fn same(a: &str, b: &str) -> bool {
        same_server(&server(a), &server(b))
    }

    #[test]
    fn same_server_compares_hosts_ports_and_databases() {
        let replica = "postgres://app:secret@10.0.0.2:5433/app";
        assert!(same(replica, replica));
        assert!(same("postgres://other@10.0.0.2:5433/app", replica));
        assert!(same("host=10.0.0.2 port=5433 dbname=app user=x", replica));
        assert!(same("postgres://app@10.0.0.2:5433", replica), "no dbname");
        assert!(same("postgres://app@10.0.0.1,10.0.0.2:5433/app", replica));
        assert!(same(
            "postgres://app@LOCALHOST/app",
            "postgres://app@127.0.0.1:5432/app"
        ));
        assert!(same(
            "postgres://app@[::1]:6000/app",
            "postgres://app@localhost:6000/app"
        ));
        assert!(!same("postgres://app@10.0.0.2:5432/app", replica), "port");
        assert!(!same("postgres://app@10.0.0.3:5433/app", replica), "host");
        assert!(
            !same("postgres://app@10.0.0.2:5433/other", replica),
            "dbname"
        );
    }

    #[test]
    fn ports_pair_with_hosts_and_default_to_5432() {
        assert!(same(
            "postgres://app@a:6000,b:6001/app",
            "postgres://app@b:6001/app"
        ));
        assert!(!same(
            "postgres://app@a:6000,b:6001/app",
            "postgres://app@b:6000/app"
        ));
        assert!(same(
            "host=a,b port=6000 dbname=app",
            "postgres://b:6000/app"
        ));
        assert!(same(
            "host=db.example.com. dbname=app",
            "postgres://DB.example.com:5432/app"
        ));
        assert!(same(
            "host=/run/postgresql port=5433 dbname=app",
            "host=/run/postgresql port=5433 dbname=app user=other"
        ));
        assert!(!same(
            "host=/run/postgresql port=5433 dbname=app",
            "host=/tmp port=5433 dbname=app"
        ));
    }

    #[test]
    fn refusal_names_the_first_matching_replica_without_passwords() {
        let target = server("postgres://app:target-pw@localhost:5433/app");
        let replicas = [
            server("postgres://app:r0-pw@10.0.0.9:5433/app"),
            server("postgres://app:r1-pw@127.0.0.1:5433/app"),
            server("postgres://app:r2-pw@[::1]:5433/app"),
        ];
        let error = refuse_replicas(&target, &replicas).unwrap_err();
        let Error::TargetIsReplica { replica_index, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(*replica_index, 1);
        let message = error.to_string();
        assert_eq!(
            message,
            "refusing to migrate postgres://app:***@localhost:5433/app: it designates the same \
             server as read replica 1 (postgres://app:***@127.0.0.1:5433/app); migrations run on \
             the primary only"
        );
        assert!(!format!("{error:?}").contains("-pw"), "{error:?}");
        assert!(refuse_replicas(&target, &replicas[..1]).is_ok());
        assert!(refuse_replicas(&target, &[]).is_ok());
    }
}
