//! Layer 6 (output half): each command's report as a serde structure (the `--json` output,
//! documented in docs/json.md) and its rendering as readable tables.

/// The version of the JSON vocabulary, the first key of every JSON report (and of every line
/// of JSON Lines): raised when a listed key changes name or meaning.
pub const SCHEMA_VERSION: u32 = 2;

/// A report (a struct or a map) serialized with `schema_version` first, streamed as it is
/// written.
#[derive(serde::Serialize)]
pub struct Versioned<'a, T: serde::Serialize> {
    schema_version: u32,
    #[serde(flatten)]
    report: &'a T,
}

/// One line of JSON Lines: `schema_version`, then `"type": kind`, then the fields.
pub fn write_line<T: serde::Serialize>(
    w: &mut dyn std::io::Write,
    kind: &'static str,
    fields: &T,
) -> std::io::Result<()> {
    #[derive(serde::Serialize)]
    struct Line<'a, T: serde::Serialize> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        fields: &'a T,
    }
    serde_json::to_writer(&mut *w, &versioned(&Line { kind, fields }))?;
    w.write_all(b"\n")
}

/// `report` with `schema_version` first.
pub fn versioned<T: serde::Serialize>(report: &T) -> Versioned<'_, T> {
    Versioned { schema_version: SCHEMA_VERSION, report }
}

pub mod align;
pub mod check;
pub mod compact;
pub mod diff;
pub mod dump;
pub mod extract;
pub mod files;
pub mod map;
pub mod owner;
pub mod ranges;
pub mod rebase;
pub mod reg;
#[cfg(feature = "schema")]
pub mod schema;
pub mod table;
