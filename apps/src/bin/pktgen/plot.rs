//! The latency percentile plot (SVG): latency against percentile, the percentile axis stretched
//! as HdrHistogram's plots do (x = log10(1 / (1 - q)): 90 %, 99 %, 99.9 %, ... equally spaced),
//! so that the tail is as visible as the median.
//!
//! SVG text is drawn by the viewer: no font is needed to write the file.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One curve: its name in the legend and its points, (quantile, latency in microseconds).
pub struct Curve {
    /// Legend text.
    pub name: String,
    /// (quantile from 0 to 1, microseconds), quantiles rising.
    pub points: Vec<[f64; 2]>,
}

/// The points of `h` (TSC ticks at `tsc_hz`) worth drawing: (quantile, microseconds).
pub fn points(h: &Histogram<u64>, tsc_hz: f64) -> Vec<[f64; 2]> {
    if h.is_empty() || tsc_hz <= 0.0 {
        return Vec::new();
    }
    h.iter_quantiles(4).map(|v| [v.quantile_iterated_to(), v.value_iterated_to() as f64 / tsc_hz * 1e6]).collect()
}

/// The stretched x of quantile `q`; q = 1 would be infinitely far right, so it is drawn at
/// `last` (1 - 1/frames).
fn stretch(q: f64, last: f64) -> f64 {
    -(1.0 - q.min(last)).log10()
}

/// The label of stretched percentile `x`: 0 -> "0%", 1 -> "90%", 2 -> "99%", 3 -> "99.9%".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i32 - 2).clamp(0, 6) as usize;
    format!("{p:.decimals$}%")
}

/// Writes the curves into an SVG file at `path`; `frames` (the most frames behind any curve) sets
/// how far right the last point goes.
pub fn write(path: &Path, title: &str, curves: &[Curve], frames: u64) -> Result<(), String> {
    let last = 1.0 - 1.0 / frames.max(2) as f64;
    let series: Vec<(&str, Vec<(f64, f64)>)> = curves
        .iter()
        .filter(|c| !c.points.is_empty())
        .map(|c| (c.name.as_str(), c.points.iter().map(|&[q, us]| (stretch(q, last), us)).collect()))
        .collect();
    if series.is_empty() {
        return Err("no latency measured: nothing to plot".into());
    }
    let x_max = series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x)).fold(1.0f64, f64::max).ceil();
    let y_max = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y)).fold(0.0f64, f64::max) * 1.05;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max.max(0.001))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (us)")
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("writing the plot {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }

    #[test]
    fn writes_an_svg_with_the_curves() {
        let mut h = crate::engine::histogram();
        for v in 1..=10_000u64 {
            h.record(1000 + v).unwrap();
        }
        let path = std::env::temp_dir().join(format!("pktgen-plot-test-{}.svg", std::process::id()));
        let curve = points(&h, 1e9);
        assert_eq!(curve.last().map(|p| p[0]), Some(1.0));
        assert!(curve.windows(2).all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]), "{curve:?}");
        write(&path, "test", &[Curve { name: "one".into(), points: curve }], h.len()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("99.9%"), "{svg}");
        let empty = points(&crate::engine::histogram(), 1e9);
        assert!(write(&path, "none", &[Curve { name: "empty".into(), points: empty }], 0).is_err());
    }
}
