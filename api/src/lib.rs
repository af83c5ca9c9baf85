//! The `isnad` binary's library: configuration, the HTTP server and its handlers, the bootstrap
//! admin token, and the operator's and auditor's command-line tools.
//!
//! - [`server`]: `app(state)`, the one router over one [`server::AppState`]; the limits
//!   middleware (load shedding, time limit), the activity API, `serve`.
//! - [`admission`]: the first step of every gateway request (the key), and the bounded summary
//!   of refusals made before it.
//! - [`gateway`]: the OpenAI-compatible handlers: parse, admit, submit, respond.
//! - [`admin`]: teams, keys and `/v1/me` over access control ([`isnad_pipeline::access`]).
//! - [`ratelimit`]: where a request's limits stand, as response headers.
//! - [`error`]: the one mapping from errors and refusal codes to HTTP.
//! - [`auth`], [`config`], [`tls`], [`metrics`], and the CLI tools ([`journal_cli`],
//!   [`models_cli`], [`admin_cli`]).
//!
//! Modules depend in one direction: handlers (`gateway`, `admin`) use `admission`, `auth` and
//! `error`; `error` uses
//! `auth` for role names; nothing here imports `server` but `main`.

pub mod admin;
pub mod admin_cli;
pub mod admission;
pub mod auth;
pub mod config;
pub mod error;
pub mod gateway;
pub mod idempotency;
pub mod journal_cli;
pub mod metrics;
pub mod models_cli;
pub mod ratelimit;
pub mod server;
pub mod tls;
