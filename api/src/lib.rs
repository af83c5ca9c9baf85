//! The `isnad` binary's library: configuration, the HTTP server and its handlers, the bootstrap
//! admin token, and the operator's and auditor's command-line tools. Handlers stay thin: parse,
//! authorise, hand to the journal or pipeline, shape the response; HTTP status mapping lives only
//! in [`error`].

pub mod auth;
pub mod config;
pub mod error;
pub mod gateway;
pub mod journal_cli;
pub mod metrics;
pub mod models_cli;
pub mod server;
pub mod tls;
