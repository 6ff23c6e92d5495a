//! stockflow's application shell: the CLI, the Kafka source, ingest, the simulator, the lake
//! sink and the demo, wired around the pure compute of the `dataflows` crate.

pub mod catalog;
pub mod cli;
pub mod commit;
pub mod demo;
pub mod finnhub;
pub mod iceberg;
pub mod ingest;
pub mod job;
pub mod kafka;
pub mod lake;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod sql;
pub mod status;
