//! `pktgen`: a packet generator with latency histograms, on any virtio-net port — a VFIO PCI
//! function (`--port pci:0000:00:03.0`) or a vhost-user backend (`--port vhost:/tmp/vh.sock`) —
//! written on virtio-pmd's public API only.
//!
//! It sends Ethernet/IPv4/UDP frames of the given sizes over N flows (the 5-tuples differ, for a
//! receiver's RSS), at a TSC-paced rate (`--rate 1m`) or as fast as the rings take them, each
//! frame carrying its flow, a sequence number and a TSC stamp ([`frame`]). Whatever comes back
//! on the same queues (a peer in macswap or io mode) is checked: loss, late (reordered) and
//! duplicated frames ([`track`]), and latency into an HdrHistogram. A line per second while it
//! runs; at the end the totals and the latency p50/p90/p99/p99.9/max, a JSON summary (`--json`:
//! every line a JSON object), and the latency percentile plot (`--plot FILE.svg`).
//!
//! Exit status: 0 done (loss is reported, not an error); 1 mbufs missing from the pool after the
//! stop; 2 the run could not be set up.
#![deny(unsafe_code)]

mod engine;
mod frame;
mod plot;
mod report;
mod track;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use virtio_pmd::lcore::{self, LcoreWork, STOP};
use virtio_pmd::net::MacAddr;
use virtio_pmd::setup::{DeviceSpec, PortSet, PortSetOptions, SetupError};
use virtio_pmd_apps::report::init_logging;
use virtio_pmd_apps::tsc;

use engine::Params;
use frame::{Flows, MAX_FLOWS, MAX_LEN, MIN_LEN};
use report::{Setup, Summary};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "pktgen",
    about = "Packet generator with loss, reordering and latency measurement, on virtio-net ports (VFIO PCI \
             and vhost-user)",
    after_help = "Frames come back on the same queues from a peer in macswap or io mode (e.g. DPDK testpmd \
                  with net_vhost). Stops after --duration, or on SIGINT/SIGTERM."
)]
struct Cli {
    /// The port: `pci:<address>` or `vhost:<socket>[,mac=MAC]` (`queues=N` there overrides --queues).
    #[arg(long, value_name = "SPEC")]
    port: DeviceSpec,
    /// Frames per second, with an optional k, m or g suffix (e.g. 250k, 1.5m); 0 or absent: as
    /// fast as possible.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Frame sizes in bytes, without the FCS (64 to 1514), sent in turn.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    sizes: Vec<usize>,
    /// Flows (distinct IPv4 source and UDP source port), at least one per queue pair.
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Seconds to send.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Frames per burst.
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// The port set's options: queue pairs (the flows are spread over them), rings, the pool,
    /// huge pages, no-IOMMU.
    #[command(flatten)]
    set: PortSetOptions,
    /// Destination MAC of the frames.
    #[arg(long, default_value_t = MacAddr::default_peer(0))]
    dst_mac: MacAddr,
    /// Core to pin the generator thread to.
    #[arg(long)]
    core: Option<usize>,
    /// Print the live lines and the summary as JSON objects, one per line.
    #[arg(long)]
    json: bool,
    /// Write the latency percentile plot to this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Also draw the curve of an earlier run on the plot, from its JSON summary (a file holding
    /// `--json` output; its last line is read); repeat for more.
    #[arg(long, value_name = "JSON", requires = "plot")]
    overlay: Vec<PathBuf>,
}

/// `250k`, `1.5m`, `2g`, `1000`: frames per second; 0 means as fast as possible.
fn parse_rate(s: &str) -> Result<f64, String> {
    let (number, scale) = match s.char_indices().last() {
        Some((at, 'k' | 'K')) => (&s[..at], 1e3),
        Some((at, 'm' | 'M')) => (&s[..at], 1e6),
        Some((at, 'g' | 'G')) => (&s[..at], 1e9),
        _ => (s, 1.0),
    };
    let rate = number.parse::<f64>().map_err(|_| format!("'{s}' is not a rate (e.g. 1000, 250k, 1.5m)"))? * scale;
    if !rate.is_finite() || rate < 0.0 {
        return Err(format!("'{s}': the rate must be 0 or more frames per second"));
    }
    Ok(rate)
}

impl Cli {
    /// Checks what clap cannot.
    fn validate(&self) -> Result<(), String> {
        if let Some(bad) = self.sizes.iter().find(|&&s| !(MIN_LEN..=MAX_LEN).contains(&s)) {
            return Err(format!("--sizes: {bad} is not within {MIN_LEN}..={MAX_LEN} bytes"));
        }
        if self.sizes.is_empty() {
            return Err("--sizes: give at least one size".into());
        }
        let queues = self.set.queue_pairs();
        if queues == 0 || !(usize::from(queues)..=MAX_FLOWS).contains(&self.flows) {
            return Err(format!("--flows {} must be from --queues ({queues}) to {MAX_FLOWS}", self.flows));
        }
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            return Err(format!("--duration {} must be a positive number of seconds", self.duration));
        }
        // The device's maximum ring size when none is given is at most 1024.
        let ring_size = self.set.ring_size.unwrap_or(1024);
        if self.burst == 0 || self.burst > usize::from(ring_size) {
            return Err(format!("--burst {} must be from 1 to the ring size ({ring_size})", self.burst));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    init_logging("warn", true);
    let cli = Cli::parse();
    if let Err(err) = cli.validate() {
        eprintln!("pktgen: {err}");
        return ExitCode::from(2);
    }
    if let Err(err) = lcore::install_stop_handler() {
        eprintln!("pktgen: cannot install the SIGINT/SIGTERM handler: {err}");
        return ExitCode::from(2);
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("pktgen: {err}");
            ExitCode::from(2)
        }
    }
}

/// Human lines go to stdout, or to stderr with `--json` (stdout then holds JSON only).
fn say(cli: &Cli, line: &str) {
    if cli.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// TSC ticks per second, measured against the clock over 50 ms.
fn tsc_hz() -> f64 {
    let begin = tsc::Mark::now();
    std::thread::sleep(Duration::from_millis(50));
    begin.hz_until(&tsc::Mark::now())
}

/// Opens the port, runs the generator, reports. Ok(false): mbufs were missing at the end.
fn run(cli: &Cli) -> Result<bool, String> {
    let config = cli.set.config("pktgen").map_err(|e| e.to_string())?;
    let specs = cli.set.specs(&[cli.port.to_string()]).map_err(|e| e.to_string())?;
    let mut set = PortSet::open(&specs, &config).map_err(|e| e.to_string())?;
    let mac = set.mac(0);
    let pool = set.pool().clone();
    let port = &mut set.ports_mut()[0];
    let ring = port.ring_format().name();
    let rate = cli.rate.filter(|&r| r > 0.0);
    say(
        cli,
        &format!(
            "pktgen: {ring} ring of {} | {} queue pair(s) | mac {mac} -> {} | {} flow(s) | sizes {:?} | {} | {} s",
            port.ring_size(),
            port.queue_pairs(),
            cli.dst_mac,
            cli.flows,
            cli.sizes,
            rate.map_or("as fast as possible".to_string(), |r| format!("{:.3} Mpps", r / 1e6)),
            cli.duration,
        ),
    );
    let queues = (0..port.queue_pairs())
        .map(|q| port.take_queues(q).ok_or_else(|| format!("queue pair {q} is not available")))
        .collect::<Result<Vec<_>, _>>()?;
    let tsc_hz = tsc_hz();
    let params = Params {
        burst: cli.burst,
        rate,
        duration: Duration::from_secs_f64(cli.duration),
        sizes: cli.sizes.clone(),
        flows: Flows::new(cli.flows, cli.dst_mac.0, mac.0),
        pool: pool.clone(),
        tsc_hz,
    };
    let json = cli.json;
    let generator = LcoreWork { core: cli.core, work: (queues, params) };
    let lcores = lcore::launch("pktgen", vec![generator], &STOP, move |_, (queues, params): (Vec<_>, Params)| {
        engine::run(queues, &params, &STOP, |live| {
            if json {
                println!("{}", serde_json::to_string(live).unwrap_or_default());
            } else {
                println!("{}", live.line());
            }
            let _ = std::io::stdout().flush();
        })
    })
    .map_err(|e| format!("cannot start the generator: {e}"))?;
    let outcome = lcores.wait().pop().and_then(Result::ok).ok_or("the generator panicked")?;
    let stats = set.ports()[0].stats();
    drop(pool);
    let in_use = match set.close() {
        Ok(stats) | Err(SetupError::MbufsMissing { stats }) => stats.in_use,
        Err(e) => return Err(e.to_string()),
    };
    let curve = plot::points(&outcome.latency, tsc_hz);
    let plot = match &cli.plot {
        Some(path) => {
            let title = format!(
                "pktgen latency: {} | {ring} | {} B",
                cli.port_name(),
                cli.sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
            );
            let mut curves = cli.overlay.iter().map(|file| overlay(file)).collect::<Result<Vec<_>, _>>()?;
            let name = curve_name(rate, outcome.latency.len());
            curves.push(Overlay { curve: plot::Curve { name, points: curve.clone() }, frames: outcome.latency.len() });
            let frames = curves.iter().map(|c| c.frames).max().unwrap_or(0).max(outcome.latency.len());
            let curves: Vec<plot::Curve> = curves.into_iter().map(|c| c.curve).collect();
            plot::write(path, &title, &curves, frames)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let setup = Setup {
        port: cli.port_name(),
        ring: ring.into(),
        queues: stats.rx_queues.len() as u16,
        sizes: cli.sizes.clone(),
        flows: cli.flows,
        rate_pps: rate,
        tsc_hz,
        stats,
    };
    let summary = Summary::new(setup, &outcome, in_use, plot, curve);
    say(cli, &summary.text());
    if cli.json {
        println!("{}", serde_json::to_string(&summary).map_err(|e| format!("JSON summary: {e}"))?);
    }
    if in_use > 0 {
        eprintln!("pktgen: {in_use} mbufs did not come back to the pool");
    }
    Ok(in_use == 0)
}

/// The legend of a run's curve: its rate and frame count.
fn curve_name(rate: Option<f64>, frames: u64) -> String {
    let rate = rate.map_or("max rate".to_string(), |r| format!("{:.3} Mpps", r / 1e6));
    format!("{rate} ({frames} frames)")
}

/// A curve from an earlier run, and the frames behind it.
struct Overlay {
    curve: plot::Curve,
    frames: u64,
}

/// Reads the curve of an earlier run's JSON summary (the last line of `file`).
fn overlay(file: &std::path::Path) -> Result<Overlay, String> {
    let what = |e: String| format!("--overlay {}: {e}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| what(e.to_string()))?;
    let last = text.lines().next_back().ok_or_else(|| what("empty file".into()))?;
    let summary: Summary = serde_json::from_str(last).map_err(|e| what(format!("not a pktgen JSON summary: {e}")))?;
    let curve = plot::Curve { name: curve_name(summary.rate_pps, summary.latency.count), points: summary.curve };
    Ok(Overlay { curve, frames: summary.latency.count })
}

impl Cli {
    /// The port as given on the command line.
    fn port_name(&self) -> String {
        self.port.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1000"), Ok(1000.0));
        assert_eq!(parse_rate("250k"), Ok(250e3));
        assert_eq!(parse_rate("1.5M"), Ok(1.5e6));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1k").is_err());
    }

    #[test]
    fn options_are_checked() {
        let cli = |args: &[&str]| {
            Cli::try_parse_from([&["pktgen", "--port", "vhost:/tmp/x.sock"], args].concat()).unwrap().validate()
        };
        assert!(cli(&[]).is_ok());
        assert!(cli(&["--sizes", "64,1514", "--flows", "4", "--queues", "2"]).is_ok());
        assert!(cli(&["--sizes", "63"]).is_err());
        assert!(cli(&["--sizes", "1515"]).is_err());
        assert!(cli(&["--flows", "1", "--queues", "2"]).is_err());
        assert!(cli(&["--flows", "65537"]).is_err());
        assert!(cli(&["--duration", "0"]).is_err());
        assert!(cli(&["--burst", "2048"]).is_err());
    }
}
