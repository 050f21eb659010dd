//! Shared test fixtures: deterministic frames with sequence numbers, and their checker.
#![allow(dead_code)] // Each test binary uses its own part of the fixtures.

use virtio_pmd::mbuf::{Mbuf, Mempool, MempoolConfig};
use virtio_pmd::mem::{HugePages, IovaAllocator};

/// Ethertype of test frames (IEEE local experimental).
pub const ETHERTYPE: u16 = 0x88b5;

/// Length of frame `seq`: 60 to 1514 bytes, spread deterministically.
pub fn frame_len(seq: u64) -> usize {
    60 + (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % 1455
}

/// Byte `i` of frame `seq` past the 24-byte preamble.
fn fill(seq: u64, i: usize) -> u8 {
    (seq as usize).wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) as u8
}

/// Writes frame `seq` into `buf` (which is `frame_len(seq)` long).
pub fn write_frame(seq: u64, buf: &mut [u8]) {
    buf[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    buf[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14..22].copy_from_slice(&seq.to_le_bytes());
    let len = buf.len() as u16;
    buf[22..24].copy_from_slice(&len.to_le_bytes());
    for (i, b) in buf[24..].iter_mut().enumerate() {
        *b = fill(seq, i);
    }
}

/// Checks every byte of a received frame; returns its sequence number.
pub fn check_frame(frame: &[u8]) -> Result<u64, String> {
    if frame.len() < 24 {
        return Err(format!("runt frame of {} bytes", frame.len()));
    }
    let seq = u64::from_le_bytes(frame[14..22].try_into().unwrap());
    if frame.len() != frame_len(seq) || u16::from_le_bytes([frame[22], frame[23]]) as usize != frame.len() {
        return Err(format!("frame {seq}: length {} (expected {})", frame.len(), frame_len(seq)));
    }
    if frame[12..14] != ETHERTYPE.to_be_bytes() {
        return Err(format!("frame {seq}: bad ethertype"));
    }
    if let Some(i) = frame[24..].iter().enumerate().position(|(i, &b)| b != fill(seq, i)) {
        return Err(format!("frame {seq}: byte {} differs", i + 24));
    }
    Ok(seq)
}

/// A mbuf holding frame `seq`.
pub fn frame_mbuf(pool: &Mempool, seq: u64) -> Option<Mbuf> {
    let mut m = pool.alloc()?;
    write_frame(seq, m.append(frame_len(seq))?);
    Some(m)
}

/// A pool on 4 KiB pages (tests create many).
pub fn test_pool(count: u32) -> Mempool {
    let config = MempoolConfig { count, huge_pages: HugePages::Never, ..Default::default() };
    Mempool::new(&config, &IovaAllocator::identity()).expect("pool")
}

/// Remembers which sequence numbers arrived.
pub struct SeenSet {
    bits: Vec<u64>,
    /// How many distinct sequence numbers arrived.
    pub count: u64,
}

impl SeenSet {
    /// A set for sequence numbers `0..total`.
    pub fn new(total: u64) -> Self {
        Self { bits: vec![0; total.div_ceil(64) as usize], count: 0 }
    }

    /// Records `seq`; an error for a duplicate or out-of-range one.
    pub fn insert(&mut self, seq: u64) -> Result<(), String> {
        let word = self.bits.get_mut((seq / 64) as usize).ok_or(format!("sequence {seq} never sent"))?;
        if *word & (1 << (seq % 64)) != 0 {
            return Err(format!("sequence {seq} received twice"));
        }
        *word |= 1 << (seq % 64);
        self.count += 1;
        Ok(())
    }
}
