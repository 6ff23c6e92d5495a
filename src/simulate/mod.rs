//! `stockflow simulate`: a local Finnhub-compatible websocket server over a seeded market.

pub mod market;
mod server;
pub mod topic;

pub use market::{Market, MarketConfig, universe};
pub use server::{ERROR_MESSAGE, Faults, Outage, Replay, SimulateConfig, serve};
