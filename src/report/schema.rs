//! The JSON Schemas of the reports, one per command (docs/schema/), derived from the report
//! types so they cannot drift from what the commands print. Every object is closed
//! (`additionalProperties: false`): a key the schema does not list is a test failure, not a
//! silent addition.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::pass::compact::CompactReport;
use crate::pass::compact::WhatIf;
use crate::pass::container::commit::CommitReport;
use crate::pass::container::create::CreateReport;
use crate::pass::container::relink::RelinkReport;
use crate::pass::container::resize::ResizeReport;
use crate::pass::extract::ExtractReport;
use crate::pass::registry::edit::EditReport;
use crate::pass::upload::UploadReport;
use crate::report::SCHEMA_VERSION;
use crate::report::align::AlignReport;
use crate::report::check::CheckReport;
use crate::report::compact::WhatIfFailure;
use crate::report::diff::DiffReport;
use crate::report::dump::DumpReport;
use crate::report::files::{FileReport, FilesDocument, PartitionFileSystem, VolumeReport};
use crate::report::map::{MapReport, MapSummary};
use crate::report::owner::{FilePlace, OwnerReport};
use crate::report::ranges::RangesReport;
use crate::report::reg::{ExportOut, KeyOut, RecoverOut, ValueGot};

/// A published schema: its file name under docs/schema/ (without `.schema.json`) and body.
pub struct Published {
    pub name: &'static str,
    pub schema: Value,
}

/// One shape a document (or a JSON Lines line) may take: its `type` on a line, and the
/// generator of its fields.
struct Shape {
    line_type: Option<&'static str>,
    fields: fn(&mut SchemaGenerator) -> schemars::Schema,
}

fn shape<T: JsonSchema>(line_type: Option<&'static str>) -> Shape {
    Shape { line_type, fields: |g| T::json_schema(g) }
}

/// Every command's schema.
pub fn all() -> Vec<Published> {
    let doc = |name, title, shapes: Vec<Shape>| Published { name, schema: document(title, shapes) };
    vec![
        doc("vhdinspect-dump", "vhdinspect dump --json", vec![shape::<DumpReport>(None)]),
        doc("vhdinspect-check", "vhdinspect check --json", vec![shape::<CheckReport>(None)]),
        doc("vhdinspect-files", "vhdinspect files --json", vec![shape::<FilesDocument>(None)]),
        doc(
            "vhdinspect-files-line",
            "a line of vhdinspect files --jsonl",
            vec![
                shape::<PartitionFileSystem>(Some("filesystem")),
                shape::<VolumeReport>(Some("volume")),
                shape::<FileReport>(Some("file")),
            ],
        ),
        doc("vhdinspect-owner", "vhdinspect owner --json", vec![shape::<OwnerReport>(None), shape::<FilePlace>(None)]),
        doc(
            "vhdinspect-owner-line",
            "a line of vhdinspect owner --jsonl",
            vec![shape::<crate::map::region::OwnerRef>(Some("owner")), shape::<OwnerReport>(Some("summary"))],
        ),
        doc("vhdinspect-map", "vhdinspect map --json", vec![shape::<MapReport>(None)]),
        doc(
            "vhdinspect-map-line",
            "a line of vhdinspect map --jsonl",
            vec![shape::<crate::map::blocks::BlockInfo>(Some("block")), shape::<MapSummary>(Some("summary"))],
        ),
        doc("vhdinspect-diff", "vhdinspect diff --json", vec![shape::<DiffReport>(None)]),
        doc("vhdinspect-ranges", "vhdinspect ranges --json", vec![shape::<RangesReport>(None)]),
        doc(
            "vhdinspect-rebase-plan",
            "vhdinspect rebase-plan --json",
            vec![shape::<crate::report::rebase::RebasePlan>(None)],
        ),
        doc("vhdinspect-align", "vhdinspect align --json", vec![shape::<AlignReport>(None)]),
        doc("vhdinspect-extract", "vhdinspect extract --json", vec![shape::<ExtractReport>(None)]),
        doc(
            "vhdreg-get",
            "vhdreg get --json and vhdreg list --json (also vhdinspect reg)",
            vec![shape::<ValueGot>(None), shape::<KeyOut>(None)],
        ),
        doc("vhdreg-export", "vhdreg export --json (also vhdinspect reg)", vec![shape::<ExportOut>(None)]),
        doc("vhdreg-write", "vhdreg set, delete and import --json", vec![shape::<EditReport>(None)]),
        doc("vhdreg-recover", "vhdreg recover --json", vec![shape::<RecoverOut>(None)]),
        doc("vhdcompact", "vhdcompact IN OUT --json", vec![shape::<CompactReport>(None)]),
        doc("vhddisk-create", "vhddisk create --json", vec![shape::<CreateReport>(None)]),
        doc("vhddisk-resize", "vhddisk expand and shrink --json", vec![shape::<ResizeReport>(None)]),
        doc("vhddisk-set-parent", "vhddisk set-parent --json", vec![shape::<RelinkReport>(None)]),
        doc("vhddisk-commit", "vhddisk commit --json", vec![shape::<CommitReport>(None)]),
        doc("vhdcompact-upload", "vhdcompact IN URL --json", vec![shape::<UploadReport>(None)]),
        doc(
            "vhdcompact-what-if-line",
            "a line of vhdcompact --what-if --json",
            vec![shape::<WhatIf>(None), shape::<WhatIfFailure>(None)],
        ),
    ]
}

/// A draft 2020-12 schema accepting any of `shapes`, each with `schema_version` (and `type` on
/// a line) in front of its fields.
fn document(title: &str, shapes: Vec<Shape>) -> Value {
    let mut g = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let mut variants: Vec<Value> =
        shapes.iter().map(|s| versioned((s.fields)(&mut g).to_value(), s.line_type)).collect();
    let mut root = match variants.len() {
        1 => variants.remove(0),
        _ => json!({ "oneOf": variants }),
    };
    let defs = g.take_definitions(true);
    let obj = root.as_object_mut().expect("a schema document is an object");
    obj.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    obj.insert("title".into(), json!(title));
    if !defs.is_empty() {
        obj.insert("$defs".into(), Value::Object(defs));
    }
    close_objects(&mut root);
    root
}

/// `fields` with `schema_version` (and `type`) added as required properties.
fn versioned(mut fields: Value, line_type: Option<&str>) -> Value {
    let obj = fields.as_object_mut().expect("a report is a JSON object");
    let props = obj.entry("properties").or_insert_with(|| Value::Object(Map::new()));
    let props = props.as_object_mut().expect("properties is an object");
    props.insert("schema_version".into(), json!({ "const": SCHEMA_VERSION }));
    let mut required = vec![json!("schema_version")];
    if let Some(t) = line_type {
        props.insert("type".into(), json!({ "const": t }));
        required.push(json!("type"));
    }
    let list = obj.entry("required").or_insert_with(|| json!([]));
    if let Value::Array(list) = list {
        list.extend(required);
    }
    obj.insert("type".into(), json!("object"));
    fields
}

/// Marks every schema that lists properties as closed to others.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
                obj.insert("additionalProperties".into(), json!(false));
            }
            obj.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}
