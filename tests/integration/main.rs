//! Integration tests: every test asks the servers where its statements ran.

mod config;
mod context;
mod corpus;
mod custom_types;
mod faults;
mod migrations;
mod routing;
mod support;
mod survival;
mod tls;
mod transactions;
mod web;
