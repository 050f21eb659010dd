//! What the forwarders print: per-port counter snapshots, sampled once per statistics period
//! ([`Sampler`]), rates in Mpps, JSON lines (`--json`), and the logging set-up (tracing to
//! stderr, so that stdout carries only the programs' own lines).

use std::time::{Duration, Instant};

use virtio_pmd::net::{rates, Port, PortStats, Xstat};

/// Counters of one port at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Frames dropped: by the port (receive and transmit) and by the program (`app_drops`).
    pub dropped: u64,
    /// Receive and transmit errors.
    pub errors: u64,
    /// Receive buffer allocation failures.
    pub alloc_failures: u64,
    /// Notifications sent to the device (receive and transmit).
    pub kicks: u64,
}

impl Snapshot {
    /// The port's counters, with `app_drops` frames the program dropped on it added to its drops.
    pub fn of(stats: &PortStats, app_drops: u64) -> Snapshot {
        Snapshot {
            rx: stats.rx.packets,
            tx: stats.tx.packets,
            dropped: app_drops + stats.rx.drops + stats.tx.drops,
            errors: stats.rx.errors + stats.tx.errors,
            alloc_failures: stats.rx.alloc_failures,
            kicks: stats.rx.kicks + stats.tx.kicks,
        }
    }
}

impl std::ops::AddAssign for Snapshot {
    fn add_assign(&mut self, other: Snapshot) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.dropped += other.dropped;
        self.errors += other.errors;
        self.alloc_failures += other.alloc_failures;
        self.kicks += other.kicks;
    }
}

/// Every port's counters and extended statistics, sampled once per statistics period.
#[derive(Debug)]
pub struct Sampler {
    app: &'static str,
    begin: Instant,
    last: Sample,
}

/// Every port's counters at one moment, each read once.
#[derive(Debug)]
struct Sample {
    at: Instant,
    /// Each port's counters, its frames the program dropped included.
    snapshots: Vec<Snapshot>,
    xstats: Vec<Vec<Xstat>>,
    /// Each port's frames the program dropped.
    app_drops: Vec<u64>,
}

/// What every port did over one statistics period.
#[derive(Debug)]
pub struct Period {
    /// Seconds from the sampler's start to the period's end.
    pub t: f64,
    /// The period's length.
    pub over: Duration,
    /// Each port's counters at the start and at the end of the period.
    pub ports: Vec<(Snapshot, Snapshot)>,
    app: &'static str,
    app_drops: Vec<u64>,
    xstats: Vec<(Vec<Xstat>, Vec<Xstat>)>,
}

impl Sample {
    /// Every port's counters now, with `app_drops(port)` frames the program dropped added to its drops.
    fn of(ports: &[Port], app_drops: &dyn Fn(usize) -> u64) -> Sample {
        let app_drops: Vec<u64> = (0..ports.len()).map(app_drops).collect();
        let snapshots = ports.iter().zip(&app_drops).map(|(port, &drops)| Snapshot::of(&port.stats(), drops)).collect();
        Sample { at: Instant::now(), snapshots, xstats: ports.iter().map(Port::xstats).collect(), app_drops }
    }
}

impl Sampler {
    /// Starts sampling `ports` for `app`'s lines; `app_drops` as in [`sample`](Self::sample).
    pub fn new(app: &'static str, ports: &[Port], app_drops: &dyn Fn(usize) -> u64) -> Sampler {
        let last = Sample::of(ports, app_drops);
        Sampler { app, begin: last.at, last }
    }

    /// The time since [`new`](Self::new).
    pub fn elapsed(&self) -> Duration {
        self.begin.elapsed()
    }

    /// The period since the last sample (the first: since [`new`](Self::new)); `app_drops(port)`
    /// is the frames the program dropped on the port so far.
    pub fn sample(&mut self, ports: &[Port], app_drops: &dyn Fn(usize) -> u64) -> Period {
        let (before, now) = (std::mem::replace(&mut self.last, Sample::of(ports, app_drops)), &self.last);
        Period {
            t: (now.at - self.begin).as_secs_f64(),
            over: now.at - before.at,
            ports: before.snapshots.into_iter().zip(now.snapshots.iter().copied()).collect(),
            app: self.app,
            app_drops: now.app_drops.clone(),
            xstats: before.xstats.into_iter().zip(now.xstats.iter().cloned()).collect(),
        }
    }
}

impl Period {
    /// Port `id`'s frames received and sent per second over the period, in millions.
    pub fn mpps(&self, id: usize) -> (f64, f64) {
        let (before, now) = &self.ports[id];
        (mpps(now.rx - before.rx, self.over), mpps(now.tx - before.tx, self.over))
    }

    /// Port `id` over the period, as a [`Record`]: `t=<secs>s port rx tx dropped rx_mpps
    /// tx_mpps` (totals so far, rates over the period), and `errors alloc_failures` when any.
    pub fn record(&self, id: usize) -> Record {
        let ((_, n), (rx, tx)) = (&self.ports[id], self.mpps(id));
        let record = Record::default().text("t", format!("{:.1}s", self.t)).int("port", id as u64);
        let record = record.int("rx", n.rx).int("tx", n.tx).int("dropped", n.dropped);
        let record = record.num("rx_mpps", rx, 4).num("tx_mpps", tx, 4);
        match n.errors + n.alloc_failures {
            0 => record,
            _ => record.int("errors", n.errors).int("alloc_failures", n.alloc_failures),
        }
    }

    /// Port `id`'s JSON `stats` line: its extended statistics and their rates over the period.
    pub fn json(&self, id: usize) -> String {
        let line = JsonLine::new(self.app, "stats").num("t", self.t).int("port", id as u64);
        let line = line.int("app_dropped", self.app_drops[id]).num("interval_s", self.over.as_secs_f64());
        let (before, now) = &self.xstats[id];
        line.xstats("xstats", now).rates("rates", before, now, self.over).finish()
    }
}

/// An error with its chain of sources, each once (`port 0: ...: ...`).
pub fn describe(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    msg
}

/// `packets` over `over`, in millions per second (0 over no time).
pub fn mpps(packets: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        packets as f64 / over.as_secs_f64() / 1e6
    }
}

/// Sends tracing output to stderr, filtered by `RUST_LOG` or else by `default_filter`; `targets`
/// says whether each line names its module.
pub fn init_logging(default_filter: &str, targets: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_target(targets)
        .init();
}

/// One JSON object on one line (`--json`): `{"app":"l2fwd","event":"stats",...}`.
#[derive(Debug)]
pub struct JsonLine(serde_json::Map<String, serde_json::Value>);

impl JsonLine {
    /// A line for `event` of `app`.
    pub fn new(app: &str, event: &str) -> JsonLine {
        JsonLine(serde_json::Map::new()).text("event", event).text("app", app)
    }

    fn set(mut self, key: &str, value: serde_json::Value) -> JsonLine {
        self.0.insert(key.to_owned(), value);
        self
    }

    /// A string field.
    pub fn text(self, key: &str, value: &str) -> JsonLine {
        self.set(key, value.into())
    }

    /// An integer field.
    pub fn int(self, key: &str, value: u64) -> JsonLine {
        self.set(key, value.into())
    }

    /// A number field (JSON has no NaN or infinity: those are written as 0).
    pub fn num(self, key: &str, value: f64) -> JsonLine {
        self.set(key, if value.is_finite() { value } else { 0.0 }.into())
    }

    /// A port's extended statistics as an object under `key` (`"xstats":{"rx_good_packets":..}`).
    pub fn xstats(self, key: &str, xstats: &[Xstat]) -> JsonLine {
        let map = xstats.iter().map(|x| (x.name.clone(), x.value.into())).collect();
        self.set(key, serde_json::Value::Object(map))
    }

    /// Per-second rates of `after` over `before` ([`rates`]) as an object under `key`.
    pub fn rates(self, key: &str, before: &[Xstat], after: &[Xstat], over: Duration) -> JsonLine {
        let map = rates(before, after, over).into_iter().map(|(name, rate)| (name, rate.into())).collect();
        self.set(key, serde_json::Value::Object(map))
    }

    /// The line.
    pub fn finish(self) -> String {
        serde_json::Value::Object(self.0).to_string()
    }
}

/// A record printed both ways: `key=value ...` for people and scripts that grep, and a JSON line
/// (`--json`), from one list of fields.
#[derive(Debug, Default)]
pub struct Record(Vec<(&'static str, Value)>);

/// A field of a [`Record`].
#[derive(Debug)]
enum Value {
    Text(String),
    Int(u64),
    /// A number and the decimals it is printed with in the `key=value` form.
    Num(f64, usize),
}

impl Record {
    /// A string field.
    pub fn text(mut self, key: &'static str, value: impl Into<String>) -> Record {
        self.0.push((key, Value::Text(value.into())));
        self
    }

    /// An integer field.
    pub fn int(mut self, key: &'static str, value: u64) -> Record {
        self.0.push((key, Value::Int(value)));
        self
    }

    /// A number field, printed with `decimals` decimals in the `key=value` form.
    pub fn num(mut self, key: &'static str, value: f64, decimals: usize) -> Record {
        self.0.push((key, Value::Num(value, decimals)));
        self
    }

    /// `key=value key=value ...`
    pub fn key_values(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| match v {
                Value::Text(t) => format!("{k}={t}"),
                Value::Int(n) => format!("{k}={n}"),
                Value::Num(x, d) => format!("{k}={x:.d$}"),
            })
            .collect();
        fields.join(" ")
    }

    /// The record as a JSON line for `event` of `app` (more fields may follow; then
    /// [`JsonLine::finish`]).
    pub fn json(&self, app: &str, event: &str) -> JsonLine {
        self.0.iter().fold(JsonLine::new(app, event), |line, (k, v)| match v {
            Value::Text(t) => line.text(k, t),
            Value::Int(n) => line.int(k, *n),
            Value::Num(x, _) => line.num(k, *x),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_one_object() {
        let x = [Xstat { name: "rx_good_packets".into(), value: 30 }];
        let before = [Xstat { name: "rx_good_packets".into(), value: 10 }];
        let line = JsonLine::new("l2fwd", "stats")
            .int("port", 1)
            .num("t", 1.5)
            .text("pci", "a\"b")
            .xstats("xstats", &x)
            .rates("rates", &before, &x, Duration::from_secs(2))
            .finish();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["app"].as_str(), v["port"].as_u64()),
            (Some("stats"), Some("l2fwd"), Some(1))
        );
        assert_eq!((v["pci"].as_str(), v["t"].as_f64()), (Some("a\"b"), Some(1.5)));
        assert_eq!(
            (v["xstats"]["rx_good_packets"].as_u64(), v["rates"]["rx_good_packets"].as_f64()),
            (Some(30), Some(10.0))
        );
        let nan: serde_json::Value =
            serde_json::from_str(&JsonLine::new("a", "b").num("x", f64::NAN).finish()).unwrap();
        assert_eq!(nan["x"].as_f64(), Some(0.0));
    }

    #[test]
    fn a_record_prints_both_ways() {
        let r = Record::default().text("mode", "io").int("rx_pkts", 5).num("mpps", 1.23456, 3);
        assert_eq!(r.key_values(), "mode=io rx_pkts=5 mpps=1.235");
        // Keys in order (serde_json's map is sorted).
        assert_eq!(
            r.json("fwd", "summary").finish(),
            r#"{"app":"fwd","event":"summary","mode":"io","mpps":1.23456,"rx_pkts":5}"#
        );
    }

    #[test]
    fn a_period_prints_totals_and_rates_and_errors_only_when_there_are_some() {
        let before = Snapshot { rx: 1_000_000, tx: 500_000, ..Snapshot::default() };
        let now = Snapshot { rx: 3_000_000, tx: 1_500_000, dropped: 7, ..Snapshot::default() };
        let mut period = Period {
            t: 12.34,
            over: Duration::from_secs(2),
            ports: vec![(before, now)],
            app: "l2fwd",
            app_drops: vec![7],
            xstats: vec![(Vec::new(), Vec::new())],
        };
        assert_eq!(period.mpps(0), (1.0, 0.5));
        let line = "t=12.3s port=0 rx=3000000 tx=1500000 dropped=7 rx_mpps=1.0000 tx_mpps=0.5000";
        assert_eq!(period.record(0).key_values(), line);
        period.ports[0].1.alloc_failures = 3;
        assert_eq!(period.record(0).key_values(), format!("{line} errors=0 alloc_failures=3"));
        let json: serde_json::Value = serde_json::from_str(&period.json(0)).unwrap();
        assert_eq!((json["event"].as_str(), json["app_dropped"].as_u64()), (Some("stats"), Some(7)));
    }

    #[test]
    fn rates() {
        assert_eq!(mpps(3_000_000, Duration::from_secs(2)), 1.5);
        assert_eq!(mpps(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn a_fresh_port_snapshots_as_zeros_plus_the_programs_drops() {
        let s = Snapshot::of(&PortStats::default(), 7);
        assert_eq!(s, Snapshot { dropped: 7, ..Snapshot::default() });
    }
}
