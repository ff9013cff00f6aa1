//! Plain aligned text tables for people: columns padded to their widest cell,
//! two spaces apart, no trailing whitespace. Scripts should use `-o json`.
//!
//! Widths are terminal columns (`unicode-width`), not `char`s: a CJK character takes
//! two columns, so a subject such as `O=示例公司` would otherwise push its row out of line.

use unicode_width::UnicodeWidthStr;

/// Rows of cells, optionally under a header row.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `headers`.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// A table without a header row (e.g. `field  value` listings).
    pub fn plain() -> Self {
        Table::default()
    }

    /// Adds a row; rows shorter than others are padded with empty cells.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i] - width(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Columns a cell takes on a terminal. Control characters (newlines in free text) are
/// turned into spaces by [`cell`] first; combining marks take none, wide characters two.
fn width(s: &str) -> usize {
    s.width()
}

/// Makes free text safe for one table cell: control characters become spaces.
pub fn cell(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An empty value shown as `-`, so columns never look shifted.
pub fn or_dash(s: impl Into<String>) -> String {
    let s = s.into();
    if s.is_empty() { "-".to_string() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STATE", "ALIASES"]);
        t.row(["k1", "ENABLED", "alias/a"]);
        t.row(["key-two", "DISABLED", ""]);
        assert_eq!(
            t.render(),
            "ID       STATE     ALIASES\n\
             k1       ENABLED   alias/a\n\
             key-two  DISABLED\n"
        );
    }

    #[test]
    fn short_rows_and_plain_tables() {
        let mut t = Table::plain();
        t.row(["label", "hsmd-dev"]);
        t.row(["serial"]);
        t.row(["manufacturer", "SoftHSM"]);
        assert_eq!(
            t.render(),
            "label         hsmd-dev\nserial\nmanufacturer  SoftHSM\n"
        );
        assert_eq!(Table::plain().render(), "");
    }

    #[test]
    fn counts_characters_not_bytes() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["µs", "x"]);
        assert_eq!(t.render(), "A   B\nµs  x\n");
    }

    #[test]
    fn wide_characters_take_two_columns() {
        let mut t = Table::new(&["KEY ID", "SUBJECT", "STATE"]);
        t.row(["k1", "O=示例公司", "ENABLED"]);
        t.row(["key-two", "CN=example", "DISABLED"]);
        t.row(["k3", "O=Café", "ENABLED"]);
        let text = t.render();
        // Every line reaches the STATE column at the same terminal column.
        let starts: Vec<usize> = text
            .lines()
            .map(|line| {
                let state = line.rfind("  ").expect("three columns") + 2;
                line[..state].width()
            })
            .collect();
        assert_eq!(starts, [21, 21, 21, 21], "\n{text}");
        assert_eq!(
            text.lines().nth(1),
            Some("k1       O=示例公司  ENABLED"),
            "\n{text}"
        );
    }

    #[test]
    fn cells_are_single_line() {
        assert_eq!(cell("a\nb\tc"), "a b c");
        assert_eq!(or_dash(""), "-");
        assert_eq!(or_dash("x"), "x");
    }
}
