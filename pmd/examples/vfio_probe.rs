//! Probe virtio-net PCI functions through VFIO, and exercise the transport's error paths.
//!
//! Runs where the functions are bound to vfio-pci (the VM harness guest). Built static for the
//! guest:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
//!     --target x86_64-unknown-linux-gnu --example vfio_probe
//! ```
//!
//! Commands:
//!
//! ```text
//! vfio_probe probe BDF...                  open every BDF in one container, print what was found,
//!                                          negotiate features, set up queues 0 and 1, DRIVER_OK,
//!                                          reset; prints PROBE-OK
//! vfio_probe expect KIND BDF [TEXT]        open BDF and expect an error of KIND (not-found,
//!                                          not-virtio-net, not-bound, no-iommu, group-busy,
//!                                          not-viable, legacy) whose message contains TEXT;
//!                                          prints EXPECTED-ERROR KIND: message
//! vfio_probe hold BDF SECONDS [READY_FILE] open BDF, create READY_FILE, hold it SECONDS
//! vfio_probe remove-while-open BDF         open BDF, remove the function through sysfs from
//!                                          another thread (the kernel waits for us), then close:
//!                                          closing must not panic; prints REMOVE-OK
//! ```
//!
//! Exit status 0 when everything went as expected, 1 otherwise.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use virtio_pmd::mem::{DmaRegion, HugePages};
use virtio_pmd::spec::features::{Features, ACCESS_PLATFORM, RING_PACKED, VERSION_1};
use virtio_pmd::spec::pci as spec_pci;
use virtio_pmd::spec::{net, status};
use virtio_pmd::transport::pci::caps::cfg_type_name;
use virtio_pmd::transport::vfio::{Container, VfioPciTransport};
use virtio_pmd::transport::{QueueAddresses, RingFormat, Transport};
use virtio_pmd::Error;

fn usage() -> ExitCode {
    eprintln!(
        "usage: vfio_probe probe BDF... | expect KIND BDF [TEXT] | hold BDF SECONDS [READY_FILE] | \
         remove-while-open BDF"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["probe", bdfs @ ..] if !bdfs.is_empty() => probe(bdfs),
        ["expect", kind, bdf] => expect(kind, bdf, ""),
        ["expect", kind, bdf, text] => expect(kind, bdf, text),
        ["hold", bdf, secs] => hold(bdf, secs, None),
        ["hold", bdf, secs, ready] => hold(bdf, secs, Some(ready)),
        ["remove-while-open", bdf] => remove_while_open(bdf),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            println!("PROBE-FAIL {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Error messages as strings, with the chain of sources.
fn describe(err: &Error) -> String {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

fn kind_of(err: &Error) -> &'static str {
    match err {
        Error::PciDeviceNotFound { .. } => "not-found",
        Error::NotVirtioNet { .. } => "not-virtio-net",
        Error::NotBoundToVfio { .. } => "not-bound",
        Error::IommuUnavailable { .. } => "no-iommu",
        Error::VfioGroupBusy { .. } => "group-busy",
        Error::VfioGroupNotViable { .. } => "not-viable",
        Error::LegacyOnlyDevice { .. } => "legacy",
        _ => "other",
    }
}

fn probe(bdfs: &[&str]) -> Result<(), String> {
    let container = Container::open().map_err(|e| describe(&e))?;
    let mut ports = Vec::new();
    for bdf in bdfs {
        let port = VfioPciTransport::open(&container, bdf).map_err(|e| describe(&e))?;
        print_port(&port);
        ports.push(port);
    }
    let info = container.iommu_info().ok_or("no IOMMU information after opening the ports")?;
    println!("IOMMU {info}");
    let iova = container.iova_allocator().map_err(|e| describe(&e))?;
    let rings =
        Arc::new(DmaRegion::new("vfio-probe-rings", 2 << 20, HugePages::Preferred, &iova).map_err(|e| describe(&e))?);
    println!(
        "DMA region {:#x} bytes at VA {:#x}, IOVA {:#x} ({})",
        rings.len(),
        rings.as_ptr() as u64,
        rings.iova(),
        if rings.iova() == rings.as_ptr() as u64 { "IOVA = VA" } else { "allocated IOVA" }
    );
    container.map_dma(&rings).map_err(|e| describe(&e))?;
    for (i, port) in ports.iter_mut().enumerate() {
        port.map_dma(&rings).map_err(|e| describe(&e))?; // a no-op: already mapped
        bring_up(port, &rings, i as u64).map_err(|e| format!("{}: {}", port.name(), describe(&e)))?;
    }
    println!("mapped IOVAs: {:x?}", container.mapped_iovas());
    drop(ports);
    if !container.devices().is_empty() {
        return Err(format!("ports still registered after close: {:?}", container.devices()));
    }
    // The last port's group left the container, so the kernel dropped the IOMMU and its
    // mappings; the container knows, and maps again for a port opened afterwards.
    if !container.mapped_iovas().is_empty() {
        return Err(format!("mappings still listed after the last port closed: {:x?}", container.mapped_iovas()));
    }
    let mut again = VfioPciTransport::open(&container, bdfs[0]).map_err(|e| describe(&e))?;
    again.map_dma(&rings).map_err(|e| describe(&e))?;
    println!("{}: reopened in the same container, DMA mapped again: {:x?}", again.name(), container.mapped_iovas());
    drop(again);
    drop(container);
    println!("PROBE-OK");
    Ok(())
}

fn print_port(port: &VfioPciTransport) {
    let info = port.info();
    println!(
        "{} {:04x}:{:04x} group {} command {:#06x} (memory {}, bus master {}) BARs {:x?}",
        info.bdf,
        info.vendor,
        info.device_id,
        info.group,
        info.command,
        info.command & 2 != 0,
        info.command & 4 != 0,
        info.bars
    );
    for cap in &info.caps.virtio {
        println!(
            "  cap @{:#04x} virtio {:<7} bar {} offset {:#07x} length {:#07x}{}",
            cap.position,
            cfg_type_name(cap.cfg_type),
            cap.bar,
            cap.offset,
            cap.length,
            if cap.cfg_type == spec_pci::CAP_NOTIFY_CFG {
                format!(" multiplier {}", cap.notify_off_multiplier)
            } else {
                String::new()
            }
        );
    }
    for cap in &info.caps.other {
        println!(
            "  cap @{:#04x} id {:#04x}{}",
            cap.position,
            cap.cap_id,
            if cap.cap_id == spec_pci::config::CAP_ID_MSIX { " (MSI-X)" } else { "" }
        );
    }
    let l = &info.layout;
    println!(
        "  using common BAR{}+{:#x}, notify BAR{}+{:#x} x{}, isr {:?}, device {:?}",
        l.common.bar,
        l.common.offset,
        l.notify.bar,
        l.notify.offset,
        l.notify.notify_off_multiplier,
        l.isr.map(|c| (c.bar, c.offset)),
        l.device.map(|c| (c.bar, c.offset))
    );
}

/// Device initialization ("Device Initialization", 3.1.1) up to DRIVER_OK with two empty queues,
/// then a reset.
fn bring_up(port: &mut VfioPciTransport, rings: &DmaRegion, index: u64) -> virtio_pmd::Result<()> {
    let name = port.name().to_owned();
    port.reset()?;
    check_status(port, 0, "after reset")?;
    port.set_status(status::ACKNOWLEDGE)?;
    port.set_status(status::ACKNOWLEDGE | status::DRIVER)?;
    let offered = port.device_features()?;
    println!("{name}: device features word0 {:#010x} word1 {:#010x}", offered.word(0), offered.word(1));
    if !offered.has(VERSION_1) {
        return Err(Error::InvalidConfig(format!("{name}: VERSION_1 not offered")));
    }
    let wanted = Features::from_bits(&[VERSION_1, ACCESS_PLATFORM, RING_PACKED, net::F_MAC, net::F_STATUS]);
    let accepted = offered.intersect(wanted);
    port.set_driver_features(accepted)?;
    port.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    check_status(port, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK, "FEATURES_OK")?;
    println!("{name}: accepted {accepted:?} (word1 {:#x}), FEATURES_OK read back", accepted.word(1));

    let mut mac = [0u8; 6];
    port.read_device_config(0, &mut mac)?;
    let mut link = [0u8; 2];
    port.read_device_config(6, &mut link)?;
    println!(
        "{name}: mac {} link status {:#x}, {} queues, max sizes q0 {} q1 {}",
        mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
        u16::from_le_bytes(link),
        port.num_queues()?,
        port.max_queue_size(0)?,
        port.max_queue_size(1)?
    );

    if !accepted.has(ACCESS_PLATFORM) {
        // QEMU's device then bypasses the (virtual) IOMMU and would read the IOVAs as guest
        // physical addresses: no queues on such a device.
        println!("{name}: ACCESS_PLATFORM not offered: the device bypasses the IOMMU; skipping queue set-up");
        port.reset()?;
        check_status(port, 0, "final reset")?;
        println!("{name}: reset");
        return Ok(());
    }
    let format = if accepted.has(RING_PACKED) { RingFormat::Packed } else { RingFormat::Split };
    let base = rings.iova() + index * 0x4_0000;
    let mut notifiers = Vec::new();
    for q in 0..2u16 {
        let at = base + u64::from(q) * 0x1_0000;
        let addrs = QueueAddresses { desc: at, driver: at + 0x4000, device: at + 0x8000 };
        let max = port.max_queue_size(q)?;
        if let Some(too_big) = max.checked_mul(2) {
            // SAFETY: a size above the maximum is refused before any address is written.
            match unsafe { port.setup_queue(q, too_big, format, addrs) } {
                Err(e @ Error::QueueSizeRefused { .. }) => println!("{name}: as expected: {e}"),
                Err(e) => return Err(e),
                Ok(_) => return Err(Error::InvalidConfig(format!("{name}: queue size {too_big} accepted"))),
            }
        }
        let size = max.min(256);
        // SAFETY: the queue's 64 KiB slot of `rings`, a region this probe uses for its rings
        // alone, mapped in the container; it outlives the port, which is reset before returning.
        notifiers.push(unsafe { port.setup_queue(q, size, format, addrs) }?);
        println!("{name}: queue {q} {format:?} size {size} at IOVA {at:#x} enabled");
    }
    let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    port.set_status(all)?;
    check_status(port, all, "DRIVER_OK")?;
    let tx = base + 0x1_0000;
    let micros = transmit_one(rings, format, tx, base + 0x3_0000, &name, &mac, notifiers[1].as_ref())
        .map_err(|e| Error::InvalidConfig(format!("{name}: {e}")))?;
    println!("{name}: TX of one frame completed in {micros} us (device read ring and buffer by IOVA)");
    check_status(port, all, "after a transmit")?;
    println!(
        "{name}: status {:#x} (DRIVER_OK), bus master still {}",
        port.status()?,
        port.command_register()? & 4 != 0
    );
    port.reset()?;
    check_status(port, 0, "final reset")?;
    println!("{name}: reset");
    Ok(())
}

/// The test frame a port sends: broadcast, from its MAC, EtherType 0x88b5 (local experimental),
/// a payload naming the port, 64 bytes in all.
fn test_frame(name: &str, mac: &[u8; 6]) -> [u8; 64] {
    let mut frame = [0u8; 64];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(mac);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let text = format!("vfio_probe {name}");
    frame[14..14 + text.len()].copy_from_slice(text.as_bytes());
    frame
}

/// Sends one frame on TX queue 1, whose rings start at IOVA `ring`, by hand (the net device's
/// job; done here only to check the transport: Bus Master, the notify address, the DMA mapping).
/// The 12-byte header and the frame go at IOVA `buffer`. Waits up to a second for the device
/// to mark the descriptor used; returns the microseconds that took.
fn transmit_one(
    rings: &DmaRegion,
    format: RingFormat,
    ring: u64,
    buffer: u64,
    name: &str,
    mac: &[u8; 6],
    notifier: &dyn virtio_pmd::transport::Notify,
) -> Result<u128, String> {
    use std::sync::atomic::{fence, Ordering};
    let va = |iova: u64| {
        assert!(iova >= rings.iova() && iova + 0x1_0000 <= rings.iova() + rings.len() as u64);
        rings.as_ptr().wrapping_add((iova - rings.iova()) as usize)
    };
    let frame = test_frame(name, mac);
    let len = 12 + frame.len();
    // SAFETY: every address is inside `rings` (checked by `va`), which this function alone uses
    // until the device is reset; the accesses are volatile, as for any memory a device shares.
    unsafe {
        let buf = va(buffer);
        for i in 0..12 {
            buf.add(i).write_volatile(0);
        }
        for (i, b) in frame.iter().enumerate() {
            buf.add(12 + i).write_volatile(*b);
        }
        let desc = va(ring);
        desc.cast::<u64>().write_volatile(buffer.to_le());
        desc.add(8).cast::<u32>().write_volatile((len as u32).to_le());
        match format {
            RingFormat::Packed => {
                // Driver event suppression: no used-buffer notifications (we poll).
                va(ring + 0x4000).add(2).cast::<u16>().write_volatile(1u16.to_le());
                desc.add(12).cast::<u16>().write_volatile(0); // id 0
                                                              // The flags make the descriptor available (wrap counter 1: AVAIL set, USED clear):
                                                              // everything else must be visible first.
                fence(Ordering::Release);
                desc.add(14).cast::<u16>().write_volatile((1u16 << 7).to_le());
            }
            RingFormat::Split => {
                desc.add(12).cast::<u32>().write_volatile(0); // flags 0, next 0
                let avail = va(ring + 0x4000);
                avail.cast::<u16>().write_volatile(1u16.to_le()); // NO_INTERRUPT
                avail.add(4).cast::<u16>().write_volatile(0); // ring[0] = descriptor 0
                fence(Ordering::Release);
                avail.add(2).cast::<u16>().write_volatile(1u16.to_le()); // idx = 1
            }
        }
        fence(Ordering::SeqCst);
        notifier.notify();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            let done = match format {
                RingFormat::Packed => {
                    let flags = u16::from_le(desc.add(14).cast::<u16>().read_volatile());
                    flags & (1 << 15) != 0
                }
                RingFormat::Split => u16::from_le(va(ring + 0x8000).add(2).cast::<u16>().read_volatile()) == 1,
            };
            if done {
                return Ok(start.elapsed().as_micros());
            }
            std::hint::spin_loop();
        }
    }
    Err("the device did not complete a one-frame transmit within 1 s".into())
}

fn check_status(port: &mut VfioPciTransport, want: u8, when: &str) -> virtio_pmd::Result<()> {
    let got = port.status()?;
    if got != want {
        return Err(Error::InvalidConfig(format!("{}: status {got:#x} {when}, expected {want:#x}", port.name())));
    }
    Ok(())
}

fn expect(kind: &str, bdf: &str, text: &str) -> Result<(), String> {
    let container = Container::open().map_err(|e| describe(&e))?;
    match VfioPciTransport::open(&container, bdf) {
        Ok(_) => Err(format!("{bdf} opened, expected a {kind} error")),
        Err(e) => {
            let msg = describe(&e);
            println!("EXPECTED-ERROR {}: {msg}", kind_of(&e));
            if kind_of(&e) != kind {
                return Err(format!("expected a {kind} error, got {}", kind_of(&e)));
            }
            if !msg.contains(text) {
                return Err(format!("the message does not mention {text:?}"));
            }
            if !container.devices().is_empty() {
                return Err("a failed open left the device registered".into());
            }
            Ok(())
        }
    }
}

fn hold(bdf: &str, secs: &str, ready: Option<&str>) -> Result<(), String> {
    let secs: u64 = secs.parse().map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    let container = Container::open().map_err(|e| describe(&e))?;
    let _port = VfioPciTransport::open(&container, bdf).map_err(|e| describe(&e))?;
    println!("HOLDING {bdf} (pid {})", std::process::id());
    if let Some(ready) = ready {
        std::fs::write(ready, b"").map_err(|e| format!("{ready}: {e}"))?;
    }
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

fn remove_while_open(bdf: &str) -> Result<(), String> {
    let container = Container::open().map_err(|e| describe(&e))?;
    let port = VfioPciTransport::open(&container, bdf).map_err(|e| describe(&e))?;
    let bdf = port.name().to_owned();
    let dir = format!("/sys/bus/pci/devices/{bdf}");
    let remove = format!("{dir}/remove");
    // The kernel waits for this process to release the device before the removal completes.
    let remover = std::thread::spawn(move || std::fs::write(&remove, b"1"));
    std::thread::sleep(Duration::from_millis(500));
    println!("{bdf}: removal requested; closing");
    drop(port);
    drop(container);
    let written = remover.join().map_err(|_| "the remover thread panicked".to_owned())?;
    written.map_err(|e| format!("writing {dir}/remove: {e}"))?;
    if std::path::Path::new(&dir).exists() {
        return Err(format!("{dir} still exists after the removal"));
    }
    println!("REMOVE-OK {bdf} removed while open, closed without a panic");
    Ok(())
}
