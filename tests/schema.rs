//! docs/schema/ is what the report types generate: a changed report must come with its
//! changed schema (`VHDKIT_BLESS=1 cargo test --features schema --test schema` rewrites them).

mod common;

#[test]
fn published_schemas_match_the_report_types() {
    let dir = common::root().join("docs/schema");
    let bless = std::env::var_os("VHDKIT_BLESS").is_some();
    let mut stale = Vec::new();
    let mut names = Vec::new();
    for p in vhdkit::schema::all() {
        let path = dir.join(format!("{}.schema.json", p.name));
        let text = serde_json::to_string_pretty(&p.schema).unwrap() + "\n";
        names.push(path.file_name().unwrap().to_owned());
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(p.name);
        }
    }
    assert!(stale.is_empty(), "docs/schema/ is stale for {stale:?}: rerun with VHDKIT_BLESS=1");
    let mut extra: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !names.contains(n) && n.to_string_lossy().ends_with(".schema.json"))
        .collect();
    extra.sort();
    assert!(extra.is_empty(), "docs/schema/ holds schemas no command prints: {extra:?}");
}

#[test]
fn every_schema_is_a_valid_draft_2020_12_schema() {
    for p in vhdkit::schema::all() {
        assert!(jsonschema::draft202012::meta::is_valid(&p.schema), "{} is not a valid schema", p.name);
        jsonschema::draft202012::new(&p.schema).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
}
