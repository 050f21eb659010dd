//! The virtio-net device ("Network Device", 5.1): its receive and transmit queues on mbufs.

mod port;
mod queue;
mod stats;

pub use port::{Port, PortConfig, PortStats, RingChoice};
pub use queue::{Ring, RxQueue, TxQueue};
pub use stats::QueueStats;
