//! Readable tables: a titled comfy-table per report section. On a terminal they are boxed
//! and fit its width; piped, they are plain aligned columns within 100 columns, as `ls` and
//! `ps` print them.

use std::io::IsTerminal;

use comfy_table::{ContentArrangement, Table, presets};

/// The width of a table that is not shown on a terminal.
const PIPED_WIDTH: u16 = 100;

/// One titled table of a report.
pub struct Section {
    title: String,
    table: Table,
}

impl Section {
    /// A two-column field/value section.
    pub fn key_value(title: &str) -> Self {
        let mut table = Table::new();
        table.set_content_arrangement(ContentArrangement::Dynamic);
        if std::io::stdout().is_terminal() {
            table.load_style(presets::UTF8_FULL_CONDENSED);
            // A terminal that does not say its width (a bare pty) gets the piped width.
            if table.width().is_none_or(|w| w < 40) {
                table.set_width(PIPED_WIDTH);
            }
        } else {
            table.load_style(presets::NOTHING).set_width(PIPED_WIDTH);
        }
        Section { title: title.to_string(), table }
    }

    /// A section with column headers.
    pub fn table(title: &str, header: &[&str]) -> Self {
        let mut s = Section::key_value(title);
        s.table.set_header(header.to_vec());
        s
    }

    /// Keeps column `index` as wide as its widest cell (names that must not wrap); the
    /// other columns share what is left.
    pub fn unwrapped_column(&mut self, index: usize) {
        if let Some(c) = self.table.column_mut(index) {
            c.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }

    /// Adds a field/value row.
    pub fn kv(&mut self, key: &str, value: impl AsRef<str>) {
        self.table.add_row(vec![key.to_string(), value.as_ref().to_string()]);
    }

    /// Adds a row of cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.table.add_row(cells);
    }

    /// The title line and the table (without the padding a plain table leaves at line ends).
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.title);
        for line in self.table.to_string().lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` wrapped to the table width, lines after the first indented by `indent` spaces.
pub fn wrapped(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let opts = textwrap::Options::new(PIPED_WIDTH as usize).subsequent_indent(&pad);
    textwrap::fill(text, opts)
}

/// `text` cut to `width` characters, the last one an ellipsis when it was longer.
pub fn clipped(text: &str, width: usize) -> String {
    match text.char_indices().nth(width.saturating_sub(1)) {
        Some((at, _)) if text.chars().count() > width => format!("{}…", &text[..at]),
        _ => text.to_string(),
    }
}

/// A byte count in binary units: `2.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 if n == 1 => "1 byte".to_string(),
        0 => format!("{n} bytes"),
        _ => format!("{v:.1} {}", UNITS[u]),
    }
}

/// An image's kind in words: `dynamic vhd`, `fixed vhdx`, or `raw` (a raw disk has no
/// container to name twice).
pub fn image_kind(kind: crate::vhd::ImageKind, container: crate::vhd::image::ImageFormat) -> String {
    match container {
        crate::vhd::image::ImageFormat::Raw => "raw".to_string(),
        _ => format!("{} {}", kind.name(), container.name()),
    }
}

/// `n` and the noun, singular for one: "1 block", "2 blocks".
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(1), "1 byte");
        assert_eq!(human_bytes(2 << 20), "2.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn clipped_text_ends_in_an_ellipsis() {
        assert_eq!(clipped("abcdef", 4), "abc…");
        assert_eq!(clipped("abcd", 4), "abcd");
        assert_eq!(clipped("äöüß€", 3), "äö…");
    }
}
