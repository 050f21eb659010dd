//! The virtio-net device ("Network Device", 5.1): its receive and transmit queues on mbufs,
//! and its control queue ("Control Virtqueue", 5.1.6.5).

mod ctrl;
mod mac;
mod offload;
mod port;
mod queue;
mod rss;
mod stats;
mod xstats;

pub use ctrl::{CtrlCommand, CtrlUnavailable, RxFilter};
pub use mac::{MacAddr, MacError};
pub use offload::{OffloadConfig, Offloads};
pub use port::{Port, PortConfig, PortStats, RingChoice};
pub use queue::{Ring, RxPath, RxQueue, TxPath, TxQueue};
pub use rss::{RssCapabilities, RssConfig, DEFAULT_HASH_TYPES, DEFAULT_KEY, DEFAULT_TABLE_LEN};
pub use stats::{PacketClasses, QueueStats, SIZE_BINS};
pub use xstats::{rates, Xstat};
