//! Samples, percentiles and the printed table.
//!
//! Percentiles follow the simplest rule: sort the samples, p50 is the sample at index
//! `floor(n × 0.50)`, p99 the one at `floor(n × 0.99)` (clamped to the last). Nothing is
//! interpolated or trimmed, so a figure is always one sample that was really observed.
//!
//! Every row of the table holds a corral figure and, beside it, a baseline measured in the
//! same run, their ratio and the target the figure is read against. A row that could not be
//! measured says why instead (`n/a: …`, `missing: …`).

use std::fmt::Write as _;
use std::time::Duration;

/// The sample at fraction `q` (0.0 ..= 1.0) of the sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64) * q).floor() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// p50 and p99 of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Summary {
    /// Summarise `samples` (any order).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            p50: percentile(&s, 0.50),
            p99: percentile(&s, 0.99),
        })
    }

    /// Summarise durations, in seconds.
    pub fn of_durations(samples: &[Duration]) -> Option<Summary> {
        let secs: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        Summary::of(&secs)
    }
}

/// What a row's numbers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Seconds, printed as µs or ms.
    Time,
    /// Events per second.
    Rate,
    /// Bytes, printed as MiB.
    Bytes,
    /// Percent of one core.
    Percent,
}

impl Unit {
    /// Render one value.
    pub fn fmt(self, v: f64) -> String {
        if v.is_nan() {
            return "-".into();
        }
        match self {
            Unit::Time => {
                if v < 1e-3 {
                    format!("{:.0} µs", v * 1e6)
                } else if v < 10e-3 {
                    format!("{:.2} ms", v * 1e3)
                } else if v < 1.0 {
                    format!("{:.1} ms", v * 1e3)
                } else {
                    format!("{v:.2} s")
                }
            }
            Unit::Rate => {
                if v >= 1e6 {
                    format!("{:.2} M/s", v / 1e6)
                } else if v < 1e3 {
                    format!("{v:.0} /s")
                } else {
                    format!("{:.0} k/s", v / 1e3)
                }
            }
            Unit::Bytes => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
            Unit::Percent => format!("{v:.2} %"),
        }
    }
}

/// One figure: a summary, or why there is none.
#[derive(Debug, Clone)]
pub enum Figure {
    /// Measured.
    Measured(Summary),
    /// A single measured value (no distribution).
    Single(f64),
    /// Not measured, with the reason.
    NotMeasured(String),
}

impl Figure {
    /// The p50 (or the single value), when measured.
    pub fn p50(&self) -> Option<f64> {
        match self {
            Figure::Measured(s) => Some(s.p50),
            Figure::Single(v) => Some(*v),
            Figure::NotMeasured(_) => None,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Row number as in the docs (`1`, `2b`, …).
    pub id: String,
    /// What is measured.
    pub what: String,
    /// Unit of both figures.
    pub unit: Unit,
    /// corral's figure.
    pub corral: Figure,
    /// Name of the baseline.
    pub base_name: String,
    /// The baseline's figure, measured in the same run.
    pub base: Figure,
    /// The target, as printed (e.g. `≤ 1.3× raw`).
    pub target: String,
    /// Whether the target is met, when that can be judged.
    pub met: Option<bool>,
    /// Override for the ratio column (otherwise corral p50 / baseline p50).
    pub ratio_text: Option<String>,
}

impl Row {
    /// A row with no baseline yet.
    pub fn new(id: &str, what: &str, unit: Unit, corral: Figure) -> Row {
        Row {
            id: id.into(),
            what: what.into(),
            unit,
            corral,
            base_name: "-".into(),
            base: Figure::NotMeasured(String::new()),
            target: "-".into(),
            met: None,
            ratio_text: None,
        }
    }

    /// Set the baseline.
    pub fn base(mut self, name: &str, fig: Figure) -> Row {
        self.base_name = name.into();
        self.base = fig;
        self
    }

    /// Set the target and whether it is met.
    pub fn target(mut self, text: &str, met: Option<bool>) -> Row {
        self.target = text.into();
        self.met = met;
        self
    }

    /// corral p50 / baseline p50.
    pub fn ratio(&self) -> Option<f64> {
        match (self.corral.p50(), self.base.p50()) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    }

    fn cells(&self) -> Vec<String> {
        let (c50, c99) = figure_cells(&self.corral, self.unit);
        let (b50, b99) = figure_cells(&self.base, self.unit);
        let ratio = match (&self.ratio_text, self.ratio()) {
            (Some(t), _) => t.clone(),
            (None, Some(r)) => format!("{r:.2}×"),
            (None, None) => "-".into(),
        };
        let met = match self.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        vec![
            self.id.clone(),
            self.what.clone(),
            c50,
            c99,
            self.base_name.clone(),
            b50,
            b99,
            ratio,
            self.target.clone(),
            met.into(),
        ]
    }
}

fn figure_cells(f: &Figure, unit: Unit) -> (String, String) {
    match f {
        Figure::Measured(s) => (unit.fmt(s.p50), unit.fmt(s.p99)),
        Figure::Single(v) => (unit.fmt(*v), "-".into()),
        Figure::NotMeasured(why) if why.is_empty() => ("-".into(), "-".into()),
        Figure::NotMeasured(why) => (why.clone(), String::new()),
    }
}

const HEADER: [&str; 10] = [
    "#",
    "measurement",
    "p50",
    "p99",
    "baseline (same run)",
    "base p50",
    "base p99",
    "ratio p50",
    "target",
    "met",
];

/// Render rows as a Markdown table with fixed, padded columns. A `NotMeasured` reason spans
/// its p50 cell (and is not truncated).
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cols: &[String]| {
        out.push('|');
        for (c, w) in cols.iter().zip(&widths) {
            let pad = w - c.chars().count();
            let _ = write!(out, " {c}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(
        &mut out,
        &HEADER.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    out.push('|');
    for w in &widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for r in &cells {
        line(&mut out, r);
    }
    out
}

/// The rows of one benchmark group and a footnote per row saying how it was measured.
#[derive(Debug, Default)]
pub struct Section {
    /// Table rows.
    pub rows: Vec<Row>,
    /// Footnotes (each starts with the row id).
    pub notes: Vec<String>,
}

impl Section {
    /// Add a footnote.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

/// Summarise rates (higher is better): the "p50" is the median run and the "p99" is the run
/// at the 1st percentile, i.e. the worst 1 % (with a handful of runs: the slowest).
pub fn rate_summary(rates: &[f64]) -> Option<Summary> {
    let mut s = rates.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return None;
    }
    // The worst 1 %: index floor(n × 0.01) of the ascending order.
    Some(Summary {
        p50: percentile(&s, 0.50),
        p99: percentile(&s, 0.01),
    })
}

/// A time figure from samples (or "no samples").
pub fn fig(d: &[Duration]) -> Figure {
    match Summary::of_durations(d) {
        Some(s) => Figure::Measured(s),
        None => Figure::NotMeasured("no samples".into()),
    }
}

/// The p50 of samples, formatted (or "-").
pub fn p50(d: &[Duration]) -> String {
    Summary::of_durations(d)
        .map(|s| Unit::Time.fmt(s.p50))
        .unwrap_or_else(|| "-".into())
}

/// The p99 of samples, formatted (or "-").
pub fn p99(d: &[Duration]) -> String {
    Summary::of_durations(d)
        .map(|s| Unit::Time.fmt(s.p99))
        .unwrap_or_else(|| "-".into())
}
