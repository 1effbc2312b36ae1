//! Registry reports: values, key listings, and what a write did.

use std::fmt::Write;

use serde::Serialize;

use crate::hive::value::{ValueData, known_type_name, type_name};
use crate::hive::{Hive, KeyNode, ValueKey};
use crate::host::journal::Recovery;
use crate::pass::registry::edit::EditReport;

/// A value with its data decoded.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ValueOut {
    pub key: String,
    /// "" for the default value.
    pub name: String,
    /// The type code (1 for `REG_SZ`...).
    #[serde(rename = "type")]
    pub ty: u32,
    /// `REG_SZ`, ...; null for a type Windows does not name.
    pub type_name: Option<&'static str>,
    /// Text for strings, numbers for DWORD/QWORD, arrays for REG_MULTI_SZ, hex otherwise.
    pub data: ValueData,
}

/// `get KEY VALUE`: the value, and whether its hive may be stale.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ValueGot {
    #[serde(flatten)]
    pub value: ValueOut,
    /// Set when the hive is dirty and its logs could not be applied: the data may be stale.
    pub stale: Option<String>,
}

impl ValueOut {
    /// Decodes value `v` of `key`.
    pub fn new(hive: &Hive, key: &str, v: &ValueKey) -> crate::error::Result<Self> {
        let data = hive.value_data(v)?;
        Ok(ValueOut {
            key: key.to_string(),
            name: v.name.clone(),
            ty: v.ty,
            type_name: known_type_name(v.ty),
            data: ValueData::decode(v.ty, &data),
        })
    }
}

/// A subkey in a listing.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SubkeyOut {
    pub name: String,
    pub last_written: String,
    pub subkey_count: u32,
    pub value_count: u32,
}

/// `list KEY` (and `get KEY` without a value name).
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeyOut {
    pub key: String,
    pub last_written: String,
    pub class: Option<String>,
    /// The subkeys, one level down (absent in `export`, where every key of the subtree is
    /// listed on its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subkeys: Option<Vec<SubkeyOut>>,
    pub values: Vec<ValueOut>,
    /// Set when the hive is dirty and its logs could not be applied: the data may be stale.
    pub stale: Option<String>,
}

/// `export --json`: every key of the subtree, the exported key first, each with its values
/// (and no subkey listing: the subkeys follow as keys of their own).
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExportOut {
    pub keys: Vec<KeyOut>,
}

/// A FILETIME as ISO 8601 UTC.
pub fn filetime_text(ft: u64) -> String {
    crate::vhd::footer::unix_time_text((ft / 10_000_000).saturating_sub(11_644_473_600))
}

impl KeyOut {
    /// The listing of `key`: its values and its subkeys.
    pub fn new(hive: &Hive, path: &str, key: &KeyNode, stale: Option<String>) -> crate::error::Result<Self> {
        let mut out = KeyOut::exported(hive, path, key, stale)?;
        out.subkeys = Some(
            hive.subkeys(key)?
                .into_iter()
                .map(|k| SubkeyOut {
                    name: k.name.clone(),
                    last_written: filetime_text(k.timestamp),
                    subkey_count: k.subkey_count,
                    value_count: k.value_count,
                })
                .collect(),
        );
        Ok(out)
    }

    /// `key` as `export` lists it: its values, without its subkeys.
    pub fn exported(hive: &Hive, path: &str, key: &KeyNode, stale: Option<String>) -> crate::error::Result<Self> {
        Ok(KeyOut {
            key: path.to_string(),
            last_written: filetime_text(key.timestamp),
            class: hive.class_name(key)?,
            subkeys: None,
            values: hive
                .values(key)?
                .iter()
                .map(|v| ValueOut::new(hive, path, v))
                .collect::<crate::error::Result<_>>()?,
            stale,
        })
    }
}

/// Renders one value.
pub fn render_value(v: &ValueOut) -> String {
    let name = if v.name.is_empty() { "(default)" } else { &v.name };
    format!("{name}  {}  {}\n", type_name(v.ty), v.data)
}

/// Renders a key listing.
pub fn render_key(k: &KeyOut) -> String {
    let mut out = String::new();
    if let Some(why) = &k.stale {
        let _ = writeln!(out, "warning: {why}; showing the primary file's data, which may be stale");
    }
    let _ = writeln!(out, "{}  (last written {})", k.key, k.last_written);
    for s in k.subkeys.iter().flatten() {
        let _ = writeln!(
            out,
            "  [{}]  {}, {}, {}",
            s.name,
            crate::report::table::count(s.subkey_count as u64, "subkey"),
            crate::report::table::count(s.value_count as u64, "value"),
            s.last_written
        );
    }
    for v in &k.values {
        out.push_str("  ");
        out.push_str(&render_value(v));
    }
    out
}

/// Renders a write report.
pub fn render_write(w: &EditReport) -> String {
    let mut out = String::new();
    if let Some(r) = &w.rolled_back {
        let _ = writeln!(out, "{r}");
    }
    for c in &w.changes {
        let _ = writeln!(out, "{}{c}", if w.dry_run { "would " } else { "" });
    }
    for r in &w.replays {
        let _ = match r.applied.as_slice() {
            // An old-format log holds dirty pages, not numbered entries.
            [] => writeln!(out, "replayed {}", r.logs_used.join(", ")),
            entries => writeln!(out, "replayed log entries {entries:?} from {}", r.logs_used.join(", ")),
        };
    }
    for h in &w.hives {
        let _ = writeln!(
            out,
            "{}{}: {} {}, {} -> {} bytes{}{}{}",
            h.partition.map_or(String::new(), |p| format!("partition {p} ")),
            h.hive,
            crate::report::table::count(h.sectors_changed, "sector"),
            if w.dry_run { "to write" } else { "written" },
            h.bytes_before,
            h.bytes_after,
            if h.new_clusters > 0 { format!(", {} new clusters", h.new_clusters) } else { String::new() },
            if h.ntfs_patches.is_empty() { String::new() } else { format!(", NTFS: {}", h.ntfs_patches.join(", ")) },
            if h.logs_reset.is_empty() { String::new() } else { format!(", logs reset: {}", h.logs_reset.join(", ")) },
        );
    }
    out
}

/// What `vhdreg IMAGE recover` found and did.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RecoverOut {
    #[serde(rename = "file")]
    pub image: String,
    /// "clean" (nothing to do), "rolled_back" or "discarded_incomplete_journal".
    pub outcome: &'static str,
    pub journal: Option<String>,
    /// Ranges of the image file restored.
    pub ranges_restored: usize,
    /// The image file's length afterwards.
    pub length: Option<u64>,
}

impl RecoverOut {
    /// The report of a recovery of `image`.
    pub fn new(image: &std::path::Path, r: &Recovery) -> Self {
        let image = image.display().to_string();
        match r {
            Recovery::Clean => RecoverOut { image, outcome: "clean", journal: None, ranges_restored: 0, length: None },
            Recovery::RolledBack { journal, ranges, length } => RecoverOut {
                image,
                outcome: "rolled_back",
                journal: Some(journal.display().to_string()),
                ranges_restored: *ranges,
                length: Some(*length),
            },
            Recovery::DiscardedIncomplete { journal } => RecoverOut {
                image,
                outcome: "discarded_incomplete_journal",
                journal: Some(journal.display().to_string()),
                ranges_restored: 0,
                length: None,
            },
        }
    }
}

/// Renders a recovery report.
pub fn render_recover(r: &RecoverOut) -> String {
    let text = match r.outcome {
        "clean" => format!("{}: no interrupted write to roll back", r.image),
        _ => format!(
            "{}: {}",
            r.image,
            match (&r.journal, r.outcome) {
                (Some(j), "rolled_back") => format!(
                    "rolled back an interrupted write: {} restored from {j}, file length {}",
                    crate::report::table::count(r.ranges_restored as u64, "range"),
                    r.length.unwrap_or(0)
                ),
                (Some(j), _) => format!("removed {j}, the journal of a write interrupted before it touched the image"),
                (None, _) => String::new(),
            }
        ),
    };
    text + "\n"
}
