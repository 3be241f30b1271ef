//! Picking free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

use crate::ClusterError;

/// A loopback port that was free a moment ago.
///
/// The port is released before a server binds it, so another process may
/// take it in between; callers retry the server start with a new port.
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|err| ClusterError::io("cannot bind 127.0.0.1:0 to find a free port", err))?;
    let addr = listener
        .local_addr()
        .map_err(|err| ClusterError::io("cannot read the address of a bound socket", err))?;
    Ok(addr.port())
}
