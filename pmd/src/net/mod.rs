//! The virtio-net device ("Network Device", 5.1): its receive and transmit queues on mbufs,
//! and its control queue ("Control Virtqueue", 5.1.6.5).

mod ctrl;
mod port;
mod queue;
mod stats;

pub use ctrl::{CtrlCommand, CtrlUnavailable, RxFilter};
pub use port::{Port, PortConfig, PortStats, RingChoice};
pub use queue::{Ring, RxPath, RxQueue, TxPath, TxQueue};
pub use stats::QueueStats;
