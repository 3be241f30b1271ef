//! Integration tests: every test asks the servers where its statements ran.

mod actix;
mod cancellation;
mod config;
mod context;
mod corpus;
mod custom_types;
mod events;
mod failover;
mod faults;
mod hooks;
mod hostile;
mod migrations;
mod observe;
mod pgbouncer;
mod pools;
mod refusals;
mod routing;
mod session_state;
mod slow_reads;
mod support;
mod survival;
mod telemetry;
mod tls;
mod tokens;
mod transactions;
mod web;
