//! Pure compute for stockflow: the trade model, cleaning, event time and bars, as plain
//! functions and timely operators. Nothing here touches a network, a broker or an object
//! store; the application shell (`stockflow`'s `src/`) wires those around it.
#![deny(missing_docs)]

pub mod bars;
pub mod clean;
pub mod epoch;
pub mod gap;
pub mod memlog;
pub mod pipeline;
pub mod reason;
pub mod reference;
pub mod resume;
pub mod source;
pub mod time;
pub mod trade;

pub use bars::{Bar, BarAcc};
pub use clean::clean;
pub use gap::Gap;
pub use pipeline::{Outputs, build_pipeline};
pub use reason::Reason;
pub use source::{RawRecord, RecordSource, SourcePoll};
pub use time::{PartitionClock, Time, TimeConfig};
pub use trade::{Conditions, Quarantined, Symbol, Trade};
