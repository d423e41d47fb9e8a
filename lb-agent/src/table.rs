//! Text tables for people: `plan`, `services`, `backends`, `conntrack`,
//! `stats`, `top`, `doctor`, `explain` and `lb-addresses` all print through
//! this one printer. A column has a minimum width and grows to its widest
//! cell, so a long name widens its whole column instead of pushing the rest
//! of its own line out of step. Lines carry no trailing blanks. Free text
//! lines (a note under a row) keep their place and do not count in widths.
//! A table may have a second set of columns for rows nested under the main
//! ones (a service's backends), aligned among themselves.
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Printed in the header line; a table whose headers are all empty has none.
    pub header: &'static str,
    /// The least width, in characters.
    pub width: usize,
    pub align: Align,
}

/// A left-aligned column.
pub const fn left(header: &'static str, width: usize) -> Column {
    Column { header, width, align: Align::Left }
}

/// A right-aligned column (figures).
pub const fn right(header: &'static str, width: usize) -> Column {
    Column { header, width, align: Align::Right }
}

struct Set {
    indent: &'static str,
    cols: Vec<Column>,
}

enum Line {
    Row { set: usize, cells: Vec<String> },
    Text(String),
}

pub struct Table {
    sets: Vec<Set>,
    lines: Vec<Line>,
}

impl Table {
    pub fn new(cols: &[Column]) -> Self {
        Self { sets: vec![Set { indent: "", cols: cols.to_vec() }], lines: Vec::new() }
    }

    /// The main rows start with `indent`.
    pub fn indent(mut self, indent: &'static str) -> Self {
        self.sets[0].indent = indent;
        self
    }

    /// Columns for [`Table::sub_row`]s, each line starting with `indent`.
    pub fn with_sub(mut self, indent: &'static str, cols: &[Column]) -> Self {
        self.sets.truncate(1);
        self.sets.push(Set { indent, cols: cols.to_vec() });
        self
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.push(0, cells);
    }

    /// A row of the second set of columns (see [`Table::with_sub`]).
    pub fn sub_row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        assert!(self.sets.len() > 1, "sub_row needs with_sub");
        self.push(1, cells);
    }

    /// A line of free text, printed as it is.
    pub fn text(&mut self, line: impl Into<String>) {
        self.lines.push(Line::Text(line.into()));
    }

    fn push<S: ToString>(&mut self, set: usize, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        debug_assert!(cells.len() <= self.sets[set].cols.len(), "more cells than columns");
        self.lines.push(Line::Row { set, cells });
    }

    /// Each set's column widths: the least width, or the widest cell.
    fn widths(&self) -> Vec<Vec<usize>> {
        let mut w: Vec<Vec<usize>> = self
            .sets
            .iter()
            .map(|s| s.cols.iter().map(|c| c.width.max(width(c.header))).collect())
            .collect();
        for l in &self.lines {
            if let Line::Row { set, cells } = l {
                for (w, c) in w[*set].iter_mut().zip(cells) {
                    *w = (*w).max(width(c));
                }
            }
        }
        w
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn write_row(f: &mut fmt::Formatter<'_>, set: &Set, widths: &[usize], cells: &[String]) -> fmt::Result {
    let mut line = String::from(set.indent);
    for (i, (cell, col)) in cells.iter().zip(&set.cols).enumerate() {
        if i > 0 {
            line.push(' ');
        }
        let pad = " ".repeat(widths[i].saturating_sub(width(cell)));
        match col.align {
            Align::Left => {
                line += cell;
                line += &pad;
            }
            Align::Right => {
                line += &pad;
                line += cell;
            }
        }
    }
    writeln!(f, "{}", line.trim_end())
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        let main = &self.sets[0];
        if main.cols.iter().any(|c| !c.header.is_empty()) {
            let headers: Vec<String> = main.cols.iter().map(|c| c.header.to_string()).collect();
            write_row(f, main, &widths[0], &headers)?;
        }
        for l in &self.lines {
            match l {
                Line::Row { set, cells } => write_row(f, &self.sets[*set], &widths[*set], cells)?,
                Line::Text(t) => writeln!(f, "{t}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_keep_their_least_width_and_grow_to_the_widest_cell() {
        let mut t = Table::new(&[left("NAME", 6), right("FLOWS", 6), left("NOTE", 0)]);
        t.row(["a", "1", "x"]);
        t.row(["a-longer-name", "22", ""]);
        t.text("  (a note)");
        assert_eq!(
            t.to_string(),
            "NAME           FLOWS NOTE\n\
             a                  1 x\n\
             a-longer-name     22\n  (a note)\n"
        );
    }

    #[test]
    fn sub_rows_align_among_themselves_and_headless_tables_print_no_header() {
        let mut t = Table::new(&[left("", 3), left("", 0)]).with_sub("    ", &[left("", 7), left("", 0)]);
        t.row(["1", "web"]);
        t.sub_row(["backend", "10.0.0.1:80"]);
        t.row(["20000", "db"]);
        t.sub_row(["backend", "10.0.0.2:5432"]);
        assert_eq!(t.to_string(), "1     web\n    backend 10.0.0.1:80\n20000 db\n    backend 10.0.0.2:5432\n");
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(&[left("", 1), left("", 4), left("", 0)]);
        t.row(["✓", "ab", "fine"]);
        t.row(["✗", "abcd", "broken"]);
        assert_eq!(t.to_string(), "✓ ab   fine\n✗ abcd broken\n");
    }
}
