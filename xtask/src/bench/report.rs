//! The results: tables of absolute numbers with ratios against a base column (native
//! PostgreSQL), targets with pass/fail, skipped baselines, and their console and Markdown
//! renderings. Nothing here measures anything.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Tps,
    Qps,
    Ms,
    Us,
    Mib,
}

impl Unit {
    /// The unit of a `name<TAB>value<TAB>unit` line from the host benchmark.
    pub(crate) fn parse(unit: &str) -> Unit {
        match unit {
            "tps" => Unit::Tps,
            "qps" => Unit::Qps,
            "us" => Unit::Us,
            "MiB" | "MB" => Unit::Mib,
            _ => Unit::Ms,
        }
    }

    pub(crate) fn higher_is_better(self) -> bool {
        matches!(self, Unit::Tps | Unit::Qps)
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Tps => "tps",
            Unit::Qps => "qps",
            Unit::Ms => "ms",
            Unit::Us => "µs",
            Unit::Mib => "MiB",
        }
    }

    pub(crate) fn format(self, value: f64) -> String {
        let digits = match self {
            Unit::Tps | Unit::Qps => 0,
            _ if value >= 100.0 => 0,
            _ if value >= 10.0 => 1,
            _ => 2,
        };
        format!("{value:.digits$} {}", self.name())
    }
}

/// One row: a workload measured on each system.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) unit: Unit,
    pub(crate) cells: Vec<Option<f64>>,
}

/// Systems side by side; `base` is the column ratios are taken against.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) title: String,
    /// A short prefix for the chart's labels, where row names alone would be ambiguous.
    pub(crate) tag: String,
    pub(crate) columns: Vec<String>,
    pub(crate) base: Option<usize>,
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Table {
    pub(crate) fn new(title: &str, columns: impl IntoIterator<Item = impl Into<String>>) -> Table {
        let columns = columns.into_iter().map(Into::into).collect();
        Table { title: title.to_owned(), tag: String::new(), columns, base: None, rows: Vec::new(), notes: Vec::new() }
    }

    pub(crate) fn set(&mut self, row: &str, unit: Unit, column: usize, value: f64) {
        let n_columns = self.columns.len();
        let index = match self.rows.iter().position(|existing| existing.name == row) {
            Some(index) => index,
            None => {
                self.rows.push(Row { name: row.to_owned(), unit, cells: vec![None; n_columns] });
                self.rows.len() - 1
            }
        };
        self.rows[index].cells[column] = Some(value);
    }

    pub(crate) fn get(&self, row: &str, column: usize) -> Option<f64> {
        self.rows.iter().find(|existing| existing.name == row)?.cells.get(column).copied().flatten()
    }

    /// `value / base` for a cell, when both are there and it is not the base itself.
    pub(crate) fn ratio(&self, row: &Row, column: usize) -> Option<f64> {
        let base = self.base.filter(|base| *base != column)?;
        Some(row.cells[column]? / row.cells[base]?)
    }

    /// The columns with at least one number (a system measured in only some tables, like
    /// PgBouncer for pgbench, leaves the others empty).
    fn shown(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.columns.len()).filter(|column| self.rows.iter().any(|row| row.cells[*column].is_some()))
    }

    fn cell_text(&self, row: &Row, column: usize) -> String {
        match (row.cells[column], self.ratio(row, column)) {
            (Some(value), Some(ratio)) => format!("{} ({ratio:.2}x)", row.unit.format(value)),
            (Some(value), None) => row.unit.format(value),
            (None, _) => "—".to_owned(),
        }
    }
}

/// A goal next to what was measured.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) goal: String,
    pub(crate) measured: String,
    /// `None` when something needed was not measured.
    pub(crate) pass: Option<bool>,
}

impl Target {
    /// `measured ≥ factor × reference` (throughputs).
    pub(crate) fn at_least(
        name: &str,
        goal: &str,
        measured: Option<f64>,
        reference: Option<f64>,
        factor: f64,
        unit: Unit,
    ) -> Target {
        Target::relative(name, goal, measured, reference, unit, |m, r| m >= factor * r)
    }

    /// `check(measured, reference)`, shown with their ratio.
    pub(crate) fn relative(
        name: &str,
        goal: &str,
        measured: Option<f64>,
        reference: Option<f64>,
        unit: Unit,
        check: impl Fn(f64, f64) -> bool,
    ) -> Target {
        let (text, pass) = match (measured, reference) {
            (Some(m), Some(r)) => {
                (format!("{} vs {} ({:.2}x)", unit.format(m), unit.format(r), m / r), Some(check(m, r)))
            }
            (Some(m), None) => (format!("{} (no reference)", unit.format(m)), None),
            _ => ("not measured".to_owned(), None),
        };
        Target { name: name.to_owned(), goal: goal.to_owned(), measured: text, pass }
    }

    /// `measured ≤ limit`.
    pub(crate) fn at_most(name: &str, measured: Option<f64>, limit: f64, unit: Unit) -> Target {
        Target {
            name: name.to_owned(),
            goal: format!("≤ {}", unit.format(limit)),
            measured: measured.map_or_else(|| "not measured".to_owned(), |m| unit.format(m)),
            pass: measured.map(|m| m <= limit),
        }
    }

    fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "n/a",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) quick: bool,
    pub(crate) machine: Vec<(String, String)>,
    pub(crate) tables: Vec<Table>,
    pub(crate) targets: Vec<Target>,
    /// Baselines or runs that could not be measured, with the reason.
    pub(crate) skipped: Vec<String>,
    /// Failures of nself-embedded itself; the command fails when there are any.
    pub(crate) errors: Vec<String>,
}

const RATIO_NOTE: &str = "Ratios are value ÷ the native PostgreSQL column of the same row, from the same run: \
                          above 1 is better for tps, below 1 is better for times and memory.";

impl Report {
    pub(crate) fn new(quick: bool) -> Report {
        Report { quick, ..Report::default() }
    }

    pub(crate) fn to_console(&self) -> String {
        let mut res = String::new();
        for table in &self.tables {
            let mut grid =
                vec![std::iter::once("".to_owned()).chain(table.shown().map(|c| table.columns[c].clone())).collect()];
            for row in &table.rows {
                let cells = table.shown().map(|column| table.cell_text(row, column));
                grid.push(std::iter::once(row.name.clone()).chain(cells).collect());
            }
            let _ = writeln!(res, "\n== {}", table.title);
            res += &align(&grid);
            for note in &table.notes {
                let _ = writeln!(res, "  {note}");
            }
        }
        if !self.targets.is_empty() {
            let mut grid = vec![vec!["target".to_owned(), "goal".to_owned(), "measured".to_owned(), "".to_owned()]];
            for target in &self.targets {
                let verdict = target.verdict().to_owned();
                grid.push(vec![target.name.clone(), target.goal.clone(), target.measured.clone(), verdict]);
            }
            res += "\n== Targets\n";
            res += &align(&grid);
        }
        for (label, lines) in [("Skipped", &self.skipped), ("Errors", &self.errors)] {
            if !lines.is_empty() {
                let _ = writeln!(res, "\n== {label}");
                for line in lines {
                    let _ = writeln!(res, "- {line}");
                }
            }
        }
        let _ = writeln!(res, "\n{RATIO_NOTE}");
        res
    }

    pub(crate) fn to_markdown(&self) -> String {
        let mut res = String::from("# nself-embedded benchmark\n\n");
        res += "Generated by `cargo xtask bench`";
        if self.quick {
            res += " `--quick` (short runs, scaled-down data: a smoke test, not a result)";
        }
        res += ". ";
        res += RATIO_NOTE;
        res += " The chart (`chart.svg`) shows the same rows as speed relative to native (higher is better).\n\n";
        res += "## Machine\n\n| | |\n|---|---|\n";
        for (key, value) in &self.machine {
            let _ = writeln!(res, "| {key} | {} |", escape(value));
        }
        if !self.targets.is_empty() {
            res += "\n## Targets\n\n| target | goal | measured | result |\n|---|---|---|---|\n";
            for target in &self.targets {
                let _ =
                    writeln!(res, "| {} | {} | {} | {} |", target.name, target.goal, target.measured, target.verdict());
            }
        }
        for table in &self.tables {
            let _ = write!(res, "\n## {}\n\n| |", table.title);
            for column in table.shown() {
                let _ = write!(res, " {} |", escape(&table.columns[column]));
            }
            res += "\n|---|";
            res += &"---:|".repeat(table.shown().count());
            res += "\n";
            for row in &table.rows {
                let _ = write!(res, "| {} |", escape(&row.name));
                for column in table.shown() {
                    let _ = write!(res, " {} |", table.cell_text(row, column));
                }
                res += "\n";
            }
            for note in &table.notes {
                let _ = write!(res, "\n{note}\n");
            }
        }
        for (label, lines) in [("Skipped", &self.skipped), ("Errors", &self.errors)] {
            if !lines.is_empty() {
                let _ = writeln!(res, "\n## {label}\n");
                for line in lines {
                    let _ = writeln!(res, "- {}", line.replace('\n', " "));
                }
            }
        }
        res
    }
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Left-aligned first column, right-aligned others, two spaces apart.
fn align(grid: &[Vec<String>]) -> String {
    let n_columns = grid.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_columns)
        .map(|column| grid.iter().filter_map(|row| row.get(column)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut res = String::new();
    for row in grid {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[column] - cell.chars().count());
            if column == 0 {
                line += &format!("{cell}{pad}");
            } else {
                line += &format!("  {pad}{cell}");
            }
        }
        res += line.trim_end();
        res += "\n";
    }
    res
}
