//! Results: every run as JSON, medians and spread as a Markdown table with the targets, and
//! SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;

use crate::scenarios::Figures;
use crate::servers::Kind;

/// One scenario run against one server in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub round: usize,
    pub scenario: String,
    pub server: Kind,
    pub figures: Figures,
}

/// Everything one invocation measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub machine: String,
    pub command: String,
    pub pinning: String,
    pub rounds: usize,
    /// Durable 256-byte appends per second with `fdatasync` on the data directory's disk, one
    /// per round.
    pub fdatasync_per_s: Vec<f64>,
    pub runs: Vec<Run>,
    /// Catch-up curves (ms, entries received) of the last round, per server.
    pub catch_up_curves: BTreeMap<String, Vec<(f64, f64)>>,
    /// Scenarios a server does not have (Effect has no tenants to hibernate), and why.
    pub not_applicable: Vec<(String, Kind, String)>,
    /// Scenario runs that failed: (round, scenario, server, error).
    pub failures: Vec<(usize, String, Kind, String)>,
}

/// Median, min and max of a figure over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Results {
    pub fn stat(&self, scenario: &str, server: Kind, figure: &str) -> Option<Stat> {
        let mut v: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.scenario == scenario && r.server == server)
            .filter_map(|r| r.figures.get(figure).copied())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Stat {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    fn servers(&self) -> Vec<Kind> {
        let mut s: Vec<Kind> = self.runs.iter().map(|r| r.server).collect();
        s.sort();
        s.dedup();
        s
    }

    fn fdatasync(&self) -> Option<f64> {
        let mut v = self.fdatasync_per_s.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// A row of the table: a scenario's headline figure.
struct Row {
    scenario: &'static str,
    title: &'static str,
    figure: &'static str,
    unit: &'static str,
    /// Bigger is better (throughput) or smaller (latency, memory).
    higher_is_better: bool,
    target: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        scenario: "serial",
        title: "write, batch 1, one at a time",
        figure: "entries_per_s",
        unit: "entries/s",
        higher_is_better: true,
        target: "≥ 80 % of fdatasync/s and ≥ 3 × Effect SQL",
    },
    Row {
        scenario: "serial",
        title: "  Ack latency p99",
        figure: "ack_p99_ms",
        unit: "ms",
        higher_is_better: false,
        target: "",
    },
    Row {
        scenario: "pipelined-1x8",
        title: "write, batch 1, 8 in flight, 1 connection",
        figure: "entries_per_s",
        unit: "entries/s",
        higher_is_better: true,
        target: "≥ 1.5 × Effect memory",
    },
    Row {
        scenario: "concurrent-64",
        title: "write, batch 1, 64 connections, one tenant",
        figure: "entries_per_s",
        unit: "entries/s",
        higher_is_better: true,
        target: "≥ 25,000",
    },
    Row {
        scenario: "pipelined-100x8",
        title: "write, batch 100, 8 in flight",
        figure: "entries_per_s",
        unit: "entries/s",
        higher_is_better: true,
        target: "≥ 2 × Effect memory",
    },
    Row {
        scenario: "tenants",
        title: "write, batch 1, spread over many tenants",
        figure: "entries_per_s",
        unit: "entries/s",
        higher_is_better: true,
        target: "≥ 15,000 (1,000 tenants)",
    },
    Row {
        scenario: "fanout-lockstep",
        title: "fanout lockstep, delivery p99",
        figure: "delivery_p99_ms",
        unit: "ms",
        higher_is_better: false,
        target: "≤ 3 ms, Effect memory ≥ 3 × Wharf",
    },
    Row {
        scenario: "fanout-flat",
        title: "fanout flat out",
        figure: "deliveries_per_s",
        unit: "deliveries/s",
        higher_is_better: true,
        target: "≥ 1,000,000 (1,000 subscribers)",
    },
    Row {
        scenario: "catchup-small",
        title: "catch-up, first entry",
        figure: "first_ms",
        unit: "ms",
        higher_is_better: false,
        target: "≤ 10 ms (100,000)",
    },
    Row {
        scenario: "catchup-small",
        title: "catch-up, all",
        figure: "all_ms",
        unit: "ms",
        higher_is_better: false,
        target: "≤ 300 ms (100,000)",
    },
    Row {
        scenario: "catchup-large",
        title: "catch-up, all (large)",
        figure: "all_ms",
        unit: "ms",
        higher_is_better: false,
        target: "≤ 3,000 ms (1,000,000)",
    },
    Row {
        scenario: "idle",
        title: "idle connections: memory each",
        figure: "kib_per_connection",
        unit: "KiB",
        higher_is_better: false,
        target: "≤ 30 KiB (10,000)",
    },
    Row {
        scenario: "active-tenants",
        title: "active tenants: OS threads",
        figure: "threads",
        unit: "threads",
        higher_is_better: false,
        target: "bounded by a setting",
    },
    Row {
        scenario: "active-tenants",
        title: "active tenants: memory each beyond its connection",
        figure: "kib_per_tenant",
        unit: "KiB",
        higher_is_better: false,
        target: "≤ 100 KiB (1,000)",
    },
    Row {
        scenario: "cold-open",
        title: "cold open of a hibernated tenant (Hello), p50",
        figure: "cold_hello_p50_ms",
        unit: "ms",
        higher_is_better: false,
        target: "≤ 5 ms",
    },
    Row {
        scenario: "hibernated-tenants",
        title: "hibernated tenants: memory each (beside active ones)",
        figure: "kib_per_hibernated",
        unit: "KiB",
        higher_is_better: false,
        target: "≤ 10 KB (1,000, beside 100 active)",
    },
    Row {
        scenario: "hibernated-tenants",
        title: "relay memory, 1,000 hibernated + 100 active tenants",
        figure: "rss_mib",
        unit: "MiB",
        higher_is_better: false,
        target: "",
    },
    Row {
        scenario: "v4-serial",
        title: "v4: write, batch 1, one at a time",
        figure: "entries_per_s",
        unit: "entries/s",
        higher_is_better: true,
        target: "reported against fdatasync/s",
    },
    Row {
        scenario: "v4-pipelined-1x8",
        title: "v4: write, batch 1, 8 in flight, 1 connection",
        figure: "entries_per_s",
        unit: "entries/s",
        higher_is_better: true,
        target: "≥ 2 × Effect v4 memory",
    },
    Row {
        scenario: "v4-fanout",
        title: "v4: fanout, delivery p99",
        figure: "delivery_p99_ms",
        unit: "ms",
        higher_is_better: false,
        target: "≤ ½ × Effect v4 memory",
    },
    Row {
        scenario: "v4-catchup",
        title: "v4: catch-up, all entries",
        figure: "all_ms",
        unit: "ms",
        higher_is_better: false,
        target: "≤ ½ × Effect v4 memory",
    },
];

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Whether Wharf meets a row's target, where the run measured what it needs.
fn verdict(r: &Results, row: &Row) -> Option<bool> {
    let w = r.stat(row.scenario, Kind::Wharf, row.figure)?.median;
    let mem = r
        .stat(row.scenario, Kind::EffectMemory, row.figure)
        .map(|s| s.median);
    let sql = r
        .stat(row.scenario, Kind::EffectSql, row.figure)
        .map(|s| s.median);
    let v4mem = r
        .stat(row.scenario, Kind::EffectV4Memory, row.figure)
        .map(|s| s.median);
    Some(match (row.scenario, row.figure) {
        ("serial", "entries_per_s") => {
            w >= 0.8 * r.fdatasync()? && sql.is_none_or(|s| w >= 3.0 * s)
        }
        ("pipelined-1x8", _) => w >= 1.5 * mem?,
        ("v4-pipelined-1x8", _) => w >= 2.0 * v4mem?,
        ("v4-fanout", _) | ("v4-catchup", _) => 2.0 * w <= v4mem?,
        ("concurrent-64", _) => w >= 25_000.0,
        ("pipelined-100x8", _) => w >= 2.0 * mem?,
        ("tenants", _) => w >= 15_000.0,
        ("fanout-lockstep", _) => w <= 3.0 && mem.is_none_or(|m| m >= 3.0 * w),
        ("fanout-flat", _) => w >= 1_000_000.0,
        ("catchup-small", "first_ms") => w <= 10.0,
        ("catchup-small", "all_ms") => w <= 300.0,
        ("catchup-large", _) => w <= 3_000.0,
        ("idle", _) => w <= 30.0,
        ("active-tenants", "threads") => {
            let before = r
                .stat("active-tenants", Kind::Wharf, "threads_before")?
                .median;
            // Bounded: not growing with the tenants (a handful of threads of slack).
            w <= before + 8.0
        }
        ("active-tenants", "kib_per_tenant") => w <= 100.0,
        ("cold-open", _) => w <= 5.0,
        ("hibernated-tenants", "kib_per_hibernated") => w <= 10.0 * 1000.0 / 1024.0,
        _ => return None,
    })
}

/// The Markdown table: medians (min–max over the rounds), ratios, targets.
pub fn table(r: &Results) -> String {
    let servers = r.servers();
    let mut s = String::new();
    let _ = write!(s, "| scenario |");
    for k in &servers {
        let _ = write!(s, " {} |", k.label());
    }
    let effect: Vec<Kind> = servers
        .iter()
        .copied()
        .filter(|k| *k != Kind::Wharf)
        .collect();
    for k in &effect {
        let _ = write!(s, " Wharf vs {} |", k.label());
    }
    let _ = writeln!(s, " target | met |");
    let _ = write!(s, "| --- |");
    for _ in 0..servers.len() + effect.len() {
        let _ = write!(s, " ---: |");
    }
    let _ = writeln!(s, " --- | --- |");
    for row in ROWS {
        if servers
            .iter()
            .all(|k| r.stat(row.scenario, *k, row.figure).is_none())
        {
            continue;
        }
        let _ = write!(s, "| {} ({}) |", row.title.trim(), row.unit);
        for k in &servers {
            match r.stat(row.scenario, *k, row.figure) {
                Some(st) if (st.max - st.min).abs() > f64::EPSILON => {
                    let _ = write!(
                        s,
                        " {} <sub>{}–{}</sub> |",
                        fmt_num(st.median),
                        fmt_num(st.min),
                        fmt_num(st.max)
                    );
                }
                Some(st) => {
                    let _ = write!(s, " {} |", fmt_num(st.median));
                }
                None => {
                    let _ = write!(s, " n/a |");
                }
            }
        }
        let wharf = r.stat(row.scenario, Kind::Wharf, row.figure);
        for k in &effect {
            match (wharf, r.stat(row.scenario, *k, row.figure)) {
                (Some(w), Some(e)) if w.median > 0.0 && e.median > 0.0 => {
                    // Always "how many times better Wharf is": >1 is Wharf ahead.
                    let ratio = if row.higher_is_better {
                        w.median / e.median
                    } else {
                        e.median / w.median
                    };
                    let _ = write!(s, " {ratio:.2} × |");
                }
                _ => {
                    let _ = write!(s, " |");
                }
            }
        }
        let met = match verdict(r, row) {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(s, " {} | {met} |", row.target);
    }
    if let Some(f) = r.fdatasync() {
        let _ = writeln!(
            s,
            "\nThe disk's durable-append ceiling in this run: {} `fdatasync`s per second (256-byte appends). Ratios are \"times better\": above 1 Wharf is ahead, for throughput and for latency alike.",
            fmt_num(f)
        );
    }
    for (scenario, kind, why) in &r.not_applicable {
        let _ = writeln!(s, "\n- {scenario} on {}: {why}", kind.label());
    }
    for (round, scenario, kind, error) in &r.failures {
        let _ = writeln!(
            s,
            "\n- {scenario} on {} failed in round {}: {error}",
            kind.label(),
            round + 1
        );
    }
    s
}

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

fn color(k: Kind) -> RGBColor {
    match k {
        Kind::Wharf => COLORS[0],
        Kind::EffectMemory | Kind::EffectV4Memory => COLORS[1],
        Kind::EffectSql | Kind::EffectV4Sql => COLORS[2],
    }
}

/// A horizontal grouped bar chart with a log scale: one group per (scenario, figure), one
/// bar per server, labelled with its median.
fn bars(
    path: &Path,
    title: &str,
    r: &Results,
    groups: &[(&str, &str, &str)],
    unit: &str,
) -> Result<()> {
    let servers = r.servers();
    let (width, row_h, top, left, right) = (960i32, 22i32, 60i32, 300i32, 120i32);
    let height = top + groups.len() as i32 * (servers.len() as i32 * row_h + 16) + 50;
    let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let font = ("sans-serif", 14).into_font();
    root.draw(&Text::new(
        title.to_owned(),
        (16, 16),
        ("sans-serif", 20).into_font(),
    ))?;
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|(sc, fig, _)| servers.iter().filter_map(move |k| r.stat(sc, *k, fig)))
        .map(|s| s.median)
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1e-3);
    let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (lo, hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );
    let plot_w = (width - left - right) as f64;
    let x = |v: f64| {
        left + ((v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * plot_w) as i32
    };
    // Decade grid lines.
    let mut d = lo;
    while d <= hi * 1.0001 {
        let gx = x(d);
        root.draw(&PathElement::new(
            vec![(gx, top - 10), (gx, height - 40)],
            RGBColor(220, 220, 220),
        ))?;
        root.draw(&Text::new(fmt_num(d), (gx - 10, height - 32), font.clone()))?;
        d *= 10.0;
    }
    root.draw(&Text::new(
        format!("{unit} (log scale; medians)"),
        (left, height - 16),
        font.clone(),
    ))?;
    let mut y = top;
    for (scenario, figure, label) in groups {
        root.draw(&Text::new((*label).to_owned(), (12, y + 4), font.clone()))?;
        for k in &servers {
            if let Some(st) = r.stat(scenario, *k, figure) {
                let end = x(st.median);
                root.draw(&Rectangle::new(
                    [(left, y), (end.max(left + 1), y + row_h - 4)],
                    color(*k).filled(),
                ))?;
                root.draw(&Text::new(
                    format!("{} {}", fmt_num(st.median), k.label()),
                    (end + 6, y + 3),
                    font.clone(),
                ))?;
            }
            y += row_h;
        }
        y += 16;
    }
    root.present()?;
    Ok(())
}

/// Catch-up curves: entries received against time, one line per server.
fn catch_up_chart(path: &Path, r: &Results) -> Result<()> {
    let curves: Vec<(&String, &Vec<(f64, f64)>)> = r.catch_up_curves.iter().collect();
    if curves.is_empty() {
        return Ok(());
    }
    let max_x = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Catch-up: entries received after RequestChanges from 0",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("ms since RequestChanges")
        .y_desc("entries")
        .draw()?;
    for (name, curve) in curves {
        let c = match name.as_str() {
            n if n == Kind::Wharf.label() => color(Kind::Wharf),
            n if n == Kind::EffectMemory.label() => color(Kind::EffectMemory),
            _ => color(Kind::EffectSql),
        };
        chart
            .draw_series(LineSeries::new(curve.iter().copied(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `results.json`, `table.md` and the charts into `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("table.md"), table(r))?;
    bars(
        &dir.join("writes.svg"),
        "Acked writes per second (256-byte entries)",
        r,
        &[
            ("serial", "entries_per_s", "batch 1, one at a time"),
            ("pipelined-1x8", "entries_per_s", "batch 1, 8 in flight"),
            ("concurrent-64", "entries_per_s", "batch 1, 64 connections"),
            ("pipelined-100x8", "entries_per_s", "batch 100, 8 in flight"),
            ("tenants", "entries_per_s", "batch 1, many tenants"),
            ("fanout-flat", "deliveries_per_s", "fanout deliveries/s"),
        ],
        "per second",
    )?;
    bars(
        &dir.join("latency.svg"),
        "Latency (ms): lower is better",
        r,
        &[
            ("serial", "ack_p50_ms", "serial write, Ack p50"),
            ("serial", "ack_p99_ms", "serial write, Ack p99"),
            ("fanout-lockstep", "delivery_p50_ms", "fanout delivery p50"),
            ("fanout-lockstep", "delivery_p99_ms", "fanout delivery p99"),
            ("catchup-small", "first_ms", "catch-up, first entry"),
            ("catchup-small", "all_ms", "catch-up, all"),
        ],
        "ms",
    )?;
    catch_up_chart(&dir.join("catchup.svg"), r)?;
    Ok(())
}
