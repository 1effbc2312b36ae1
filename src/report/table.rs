//! Readable tables: a titled comfy-table per report section.

use comfy_table::{ContentArrangement, Table, presets};

/// One titled table of a report.
pub struct Section {
    title: String,
    table: Table,
}

impl Section {
    /// A two-column field/value section.
    pub fn key_value(title: &str) -> Self {
        let mut table = Table::new();
        table.load_style(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
        Section { title: title.to_string(), table }
    }

    /// A section with column headers.
    pub fn table(title: &str, header: &[&str]) -> Self {
        let mut s = Section::key_value(title);
        s.table.set_header(header.to_vec());
        s
    }

    /// Adds a field/value row.
    pub fn kv(&mut self, key: &str, value: impl AsRef<str>) {
        self.table.add_row(vec![key.to_string(), value.as_ref().to_string()]);
    }

    /// Adds a row of cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.table.add_row(cells);
    }

    /// The title line and the table.
    pub fn render(&self) -> String {
        format!("{}\n{}\n", self.title, self.table)
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
}
