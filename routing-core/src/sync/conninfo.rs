//! The libpq connection string of one server, made from the URL as the router read it: one
//! host (a multi-host URL is one server per host), its TLS parameters as libpq knows them, and
//! the keepalives and connect timeout the async pool's sessions get too.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::config::Host;

use crate::url::DatabaseUrl;

/// tokio-postgres's default keepalive idle time: a URL that kept it chose none.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// The keepalives of every session whose URL sets none, as the async pool's (see
/// `servers::connect`): a vanished server is noticed within about a minute.
const KEEPALIVES: [(&str, &str); 4] = [
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
];

/// The key/value connection string of `url`'s (first) host, password included: never print
/// it. Without a `connect_timeout` of its own, `connect_timeout` (in whole seconds, at least
/// one) bounds opening a session.
pub(super) fn of(url: &DatabaseUrl, connect_timeout: Duration) -> String {
    let config = url.config();
    let mut out = String::new();
    let mut put = |key: &str, value: &str| {
        let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
        let _ = write!(out, "{key}='{escaped}' ");
    };
    match config.get_hosts().first() {
        Some(Host::Tcp(host)) => put("host", host),
        Some(Host::Unix(path)) => put("host", &path.to_string_lossy()),
        None => {}
    }
    if let Some(address) = config.get_hostaddrs().first() {
        put("hostaddr", &address.to_string());
    }
    if let Some(port) = config.get_ports().first() {
        put("port", &port.to_string());
    }
    if let Some(user) = config.get_user() {
        put("user", user);
    }
    if let Some(password) = config.get_password() {
        put("password", &String::from_utf8_lossy(password));
    }
    if let Some(dbname) = config.get_dbname() {
        put("dbname", dbname);
    }
    if let Some(options) = config.get_options() {
        put("options", options);
    }
    if let Some(name) = config.get_application_name() {
        put("application_name", name);
    }
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(connect_timeout);
    put(
        "connect_timeout",
        &timeout.as_secs_f64().ceil().max(1.0).to_string(),
    );
    if config.get_keepalives_idle() == DEFAULT_KEEPALIVES_IDLE {
        for (key, value) in KEEPALIVES {
            put(key, value);
        }
    } else {
        put(
            "keepalives",
            if config.get_keepalives() { "1" } else { "0" },
        );
        put(
            "keepalives_idle",
            &config.get_keepalives_idle().as_secs().to_string(),
        );
        if let Some(interval) = config.get_keepalives_interval() {
            put("keepalives_interval", &interval.as_secs().to_string());
        }
        if let Some(retries) = config.get_keepalives_retries() {
            put("keepalives_count", &retries.to_string());
        }
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        put("tcp_user_timeout", &timeout.as_millis().to_string());
    }
    let ssl = url.ssl();
    put("sslmode", ssl.mode.as_str());
    if let Some(root) = &ssl.root_cert {
        put("sslrootcert", &root.to_string_lossy());
    }
    if let Some(client) = &ssl.client {
        put("sslcert", &client.cert.to_string_lossy());
        put("sslkey", &client.key.to_string_lossy());
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conninfo(url: &str) -> String {
        of(&DatabaseUrl::parse(url).unwrap(), Duration::from_secs(5))
    }

    #[test]
    fn every_setting_of_the_url_reaches_libpq() {
        assert_eq!(
            conninfo(
                "postgres://app:it's%20secret@db.example.com:5433/shop?application_name=web\
                 &sslmode=verify-full&sslrootcert=/etc/ca.crt&options=-c%20search_path%3Dx\
                 &sslcert=/etc/app.crt&sslkey=/etc/app.key"
            ),
            "host='db.example.com' port='5433' user='app' password='it\\'s secret' \
             dbname='shop' options='-c search_path=x' application_name='web' \
             connect_timeout='5' keepalives='1' keepalives_idle='30' keepalives_interval='10' \
             keepalives_count='3' sslmode='verify-full' sslrootcert='/etc/ca.crt' \
             sslcert='/etc/app.crt' sslkey='/etc/app.key'"
        );
    }

    #[test]
    fn the_urls_own_timeouts_and_keepalives_win() {
        let text = conninfo(
            "host=h user=u dbname=d connect_timeout=12 keepalives_idle=60 sslmode=disable",
        );
        assert!(text.contains("connect_timeout='12'"), "{text}");
        assert!(text.contains("keepalives_idle='60'"), "{text}");
        assert!(!text.contains("keepalives_idle='30'"), "{text}");
        assert!(text.ends_with("sslmode='disable'"), "{text}");
    }

    #[test]
    fn one_host_of_a_multi_host_url_each() {
        let url = DatabaseUrl::parse("postgres://u@a:5432,b:5433/d").unwrap();
        let hosts: Vec<String> = url
            .hosts()
            .iter()
            .map(|url| of(url, Duration::from_millis(1500)))
            .collect();
        assert!(hosts[0].starts_with("host='a' port='5432'"), "{hosts:?}");
        assert!(hosts[1].starts_with("host='b' port='5433'"), "{hosts:?}");
        assert!(hosts[1].contains("connect_timeout='2'"), "{hosts:?}");
    }
}
