//! Integration tests: every test asks the servers where its statements ran.

mod actix;
mod cancellation;
mod config;
mod context;
mod corpus;
mod custom_types;
mod diesel_api;
mod events;
mod failover;
mod faults;
mod migrations;
mod refusals;
mod routing;
mod session_state;
mod slow_reads;
mod support;
mod survival;
mod tls;
mod tokens;
mod transactions;
mod web;
