//! One connection string per host of a multi-host one (libpq's `host1:5432,host2:5432` lists).

use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// How many hosts `config` lists.
pub(super) fn count(config: &Config) -> usize {
    config.get_hosts().len()
}

/// The settings of `config` for its `index`-th host alone: the same user, password, database
/// and options, that host with its port (and address, when given); no target session attributes,
/// which only choose among hosts.
pub(super) fn single(config: &Config, index: usize) -> Config {
    let mut one = Config::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    if let Some(name) = config.get_application_name() {
        one.application_name(name);
    }
    one.ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .channel_binding(config.get_channel_binding())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        one.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        one.keepalives_retries(retries);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        one.tcp_user_timeout(*timeout);
    }
    match config.get_hosts().get(index) {
        Some(Host::Tcp(host)) => {
            one.host(host);
        }
        #[cfg(unix)]
        Some(Host::Unix(path)) => {
            one.host_path(path);
        }
        _ => {}
    }
    if let Some(address) = config.get_hostaddrs().get(index) {
        one.hostaddr(*address);
    }
    // One port for every host, or one per host.
    let ports = config.get_ports();
    if let Some(port) = ports
        .get(index)
        .or_else(|| (ports.len() == 1).then(|| &ports[0]))
    {
        one.port(*port);
    }
    one
}

/// A display form of `config`'s `index`-th host, without its password:
/// `postgres://user@host:port/db`.
pub(super) fn display(config: &Config, index: usize) -> String {
    let user = config
        .get_user()
        .map(|user| format!("{user}@"))
        .unwrap_or_default();
    let host = match config.get_hosts().get(index) {
        Some(Host::Tcp(host)) if host.contains(':') => format!("[{host}]"),
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        _ => String::new(),
    };
    let ports = config.get_ports();
    let port = ports
        .get(index)
        .or_else(|| (ports.len() == 1).then(|| &ports[0]))
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    let db = config
        .get_dbname()
        .map(|db| format!("/{db}"))
        .unwrap_or_default();
    format!("postgres://{user}{host}{port}{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_gets_its_own_settings() {
        let config: Config = "postgres://app:secret@h1:5432,h2:5433,[::1]:5434/db?application_name=x&target_session_attrs=read-write"
            .parse()
            .unwrap();
        assert_eq!(count(&config), 3);
        for (index, (host, port)) in [("h1", 5432), ("h2", 5433), ("::1", 5434)]
            .into_iter()
            .enumerate()
        {
            let one = single(&config, index);
            assert_eq!(one.get_hosts(), [Host::Tcp(host.to_owned())]);
            assert_eq!(one.get_ports(), [port]);
            assert_eq!(one.get_user(), Some("app"));
            assert_eq!(one.get_password(), Some(&b"secret"[..]));
            assert_eq!(one.get_dbname(), Some("db"));
            assert_eq!(one.get_application_name(), Some("x"));
        }
        assert_eq!(display(&config, 2), "postgres://app@[::1]:5434/db");
        let shared_port: Config = "host=a,b port=6000 user=u dbname=d".parse().unwrap();
        assert_eq!(single(&shared_port, 1).get_ports(), [6000]);
        assert_eq!(display(&shared_port, 1), "postgres://u@b:6000/d");
    }
}
