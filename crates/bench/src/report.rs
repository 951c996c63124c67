//! Results: every run kept, medians and ratios in a markdown table, the raw
//! runs as JSON, and a chart of the main figures.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One figure for one contender: every run's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) figure: String,
    pub(crate) contender: String,
    pub(crate) unit: String,
    pub(crate) higher_is_better: bool,
    pub(crate) runs: Vec<f64>,
    /// What the path includes, caveats.
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn median(&self) -> f64 {
        median(&self.runs)
    }

    fn is_ours(&self) -> bool {
        self.contender.starts_with("cloudproxy")
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Every figure measured so far, in the order first measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    /// Figures that could not be measured, and why.
    pub(crate) skipped: Vec<String>,
    pub(crate) machine: String,
    pub(crate) mode: String,
}

impl Report {
    /// Records one run's value.
    pub(crate) fn add(
        &mut self,
        figure: &str,
        contender: &str,
        unit: &str,
        higher_is_better: bool,
        value: f64,
        note: &str,
    ) {
        if let Some(row) = self
            .rows
            .iter_mut()
            .find(|r| r.figure == figure && r.contender == contender)
        {
            row.runs.push(value);
            return;
        }
        self.rows.push(Row {
            figure: figure.to_owned(),
            contender: contender.to_owned(),
            unit: unit.to_owned(),
            higher_is_better,
            runs: vec![value],
            note: note.to_owned(),
        });
    }

    /// Takes every figure of `other` (replacing the same figure and
    /// contender here): joins a full run with a partial re-run.
    pub(crate) fn merge(&mut self, other: Self) {
        for row in other.rows {
            if let Some(mine) = self
                .rows
                .iter_mut()
                .find(|r| r.figure == row.figure && r.contender == row.contender)
            {
                *mine = row;
            } else {
                self.rows.push(row);
            }
        }
        self.skipped
            .retain(|s| !s.contains("stopped early") && !s.contains("new sessions via"));
        self.skipped.extend(other.skipped);
        self.machine = format!(
            "{} Merged with a later partial run: {}",
            self.machine, other.machine
        );
    }

    pub(crate) fn skip(&mut self, what: String) {
        eprintln!("bench: skipped: {what}");
        self.skipped.push(what);
    }

    fn figures(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !out.contains(&row.figure.as_str()) {
                out.push(&row.figure);
            }
        }
        out
    }

    /// The markdown table: one line per figure and contender.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Mode: {}. {}\n", self.mode, self.machine);
        out.push_str("| figure | contender | median | min | max | runs | ours / peer |\n");
        out.push_str("| --- | --- | ---: | ---: | ---: | ---: | --- |\n");
        for figure in self.figures() {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.figure == figure).collect();
            for row in &rows {
                let min = row.runs.iter().copied().fold(f64::INFINITY, f64::min);
                let max = row.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let ratios = if row.is_ours() {
                    rows.iter()
                        .filter(|p| !p.is_ours())
                        // A ratio to zero (no loss at all) says nothing.
                        .filter(|p| p.median() != 0.0)
                        .map(|p| format!("{:.2}× {}", row.median() / p.median(), p.contender))
                        .collect::<Vec<_>>()
                        .join(", ")
                } else {
                    String::new()
                };
                let better = if row.higher_is_better { "↑" } else { "↓" };
                let _ = writeln!(
                    out,
                    "| {figure} ({} {better}) | {} | {} | {} | {} | {} | {ratios} |",
                    row.unit,
                    row.contender,
                    fmt(row.median()),
                    fmt(min),
                    fmt(max),
                    row.runs.len(),
                );
            }
        }
        let notes: Vec<String> = {
            let mut seen = Vec::new();
            for row in &self.rows {
                if !row.note.is_empty() {
                    let line = format!("- **{}**: {}", row.contender, row.note);
                    if !seen.contains(&line) {
                        seen.push(line);
                    }
                }
            }
            seen
        };
        if !notes.is_empty() {
            out.push_str("\nWhat each path includes:\n");
            for n in notes {
                let _ = writeln!(out, "{n}");
            }
        }
        if !self.skipped.is_empty() {
            out.push_str("\nNot measured:\n");
            for s in &self.skipped {
                let _ = writeln!(out, "- {s}");
            }
        }
        out
    }

    /// A 2×3 panel SVG of the main figures' medians (ours in blue).
    pub(crate) fn chart(&self, path: &Path, figures: &[&str]) -> Result<(), String> {
        let root = SVGBackend::new(path, (1500, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((2, 3));
        for (panel, figure) in panels.iter().zip(figures) {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.figure == *figure).collect();
            if rows.is_empty() {
                continue;
            }
            let names: Vec<String> = rows.iter().map(|r| short(&r.contender)).collect();
            let top = rows
                .iter()
                .map(|r| r.median())
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max)
                * 1.15;
            let top = if top > 0.0 { top } else { 1.0 };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{figure} ({})", rows[0].unit), ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((0..rows.len()).into_segmented(), 0.0..top)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(rows.len())
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .x_label_style(("sans-serif", 11))
                .draw()
                .map_err(|e| e.to_string())?;
            for (ours, colour) in [(false, RGBColor(150, 150, 150)), (true, BLUE)] {
                chart
                    .draw_series(
                        Histogram::vertical(&chart)
                            .style(colour.filled())
                            .margin(8)
                            .data(
                                rows.iter()
                                    .enumerate()
                                    .filter(|(_, r)| r.is_ours() == ours)
                                    .map(|(i, r)| (i, r.median())),
                            ),
                    )
                    .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())
    }
}

fn short(contender: &str) -> String {
    contender
        .replace("cloudproxy ", "cp ")
        .replace("cloudproxy", "cp")
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
