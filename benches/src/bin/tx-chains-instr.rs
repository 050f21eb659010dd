//! Runs `ITERATIONS` transmit bursts of one multi-segment case ([`TxChainsRig`]) for callgrind
//! to count: `tx-chains-instr packed|split chain|indirect SEGMENTS ITERATIONS`. The bursts run
//! inside `measured`, the function `scripts/bench/tx-chains-instr.sh` has callgrind collect
//! (`--toggle-collect`), so set-up and teardown are not counted.

use virtio_pmd::transport::RingFormat;
use virtio_pmd_benches::{TxChainsRig, BURST};

#[inline(never)]
fn measured(rig: &mut TxChainsRig, iterations: u64) -> u64 {
    (0..iterations).map(|_| rig.burst() as u64).sum()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tx-chains-instr packed|split chain|indirect SEGMENTS ITERATIONS";
    let [format, layout, segments, iterations] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let format = match format.as_str() {
        "packed" => RingFormat::Packed,
        "split" => RingFormat::Split,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let indirect = layout == "indirect";
    let (Ok(segments), Ok(iterations)) = (segments.parse::<usize>(), iterations.parse::<u64>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mut rig = TxChainsRig::new(format, indirect, segments);
    // Warm: the first lap of the ring and the pool's caches.
    warm_up(&mut rig);
    let sent = measured(&mut rig, iterations);
    assert_eq!(sent, iterations * BURST as u64);
    rig.finish();
    println!("packets={sent}");
}

/// A ring's worth of bursts outside the measured function.
#[inline(never)]
fn warm_up(rig: &mut TxChainsRig) {
    for _ in 0..64 {
        rig.burst();
    }
}
