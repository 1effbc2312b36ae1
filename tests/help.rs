//! The tools speak like the ones their users know: each `--help` has its own description, every
//! argument described, examples and the exit codes, in lines of at most 100 columns; man pages
//! and shell completions are generated from the same definitions, the man page renders with
//! `man -l` and the bash completion completes a subcommand.

mod common;

use std::process::Command;

use common::*;

const TOOLS: [(&str, &str); 4] = [
    ("vhdinspect", "Inspect VHD and VHDX disk images offline"),
    ("vhdcompact", "Compact VHD and VHDX images offline"),
    ("vhdreg", "Get, set, delete, import and export registry keys"),
    ("vhddisk", "Create, expand, shrink and repair VHD and VHDX disks"),
];

#[test]
fn help_describes_the_tool_with_examples_and_exit_codes() {
    for (tool, about) in TOOLS {
        let help = String::from_utf8(run_ok(bin(tool).arg("--help"))).unwrap();
        assert!(help.starts_with(about), "{tool} --help starts with {:?}", help.lines().next());
        for needle in ["Examples:", "Exit codes: 0 success", "2 a usage error", "--generate <WHAT>"] {
            assert!(help.contains(needle), "{tool} --help lacks {needle:?}");
        }
        let widest = help.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(widest <= 100, "{tool} --help has a line of {widest} columns");
        // Every command's own help too, its examples naming it.
        let commands = help.split("Commands:\n").nth(1).unwrap_or("").split("\n\n").next().unwrap_or("");
        for command in commands
            .lines()
            .filter_map(|l| l.strip_prefix("  ").filter(|r| !r.starts_with(' '))?.split_whitespace().next())
        {
            if command == "help" {
                continue;
            }
            let own = String::from_utf8(run_ok(bin(tool).args([command, "--help"]))).unwrap();
            let example = format!("{tool} ");
            assert!(
                own.contains("Examples:") && own.contains("Exit codes: 0 success") && own.contains(&example),
                "{tool} {command} --help: {own}"
            );
        }
    }
}

#[test]
fn man_pages_render_and_completions_complete() {
    let dir = tempdir();
    for (tool, _) in TOOLS {
        let man = dir.path().join(format!("{tool}.1"));
        std::fs::write(&man, run_ok(bin(tool).args(["--generate", "man"]))).unwrap();
        let shown = run(Command::new("man").arg("-l").arg(&man).env("MANPAGER", "cat").env("MANWIDTH", "80"));
        assert!(shown.status.success(), "man -l {tool}.1: {}", String::from_utf8_lossy(&shown.stderr));
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains("NAME") && text.contains(tool) && text.contains("--json"), "{tool}.1: {text}");
        // One page covers every command (no page of its own to refer to), examples as written.
        let pages: Vec<&str> = text.split_whitespace().filter(|w| w.contains("(1)")).collect();
        assert!(pages.iter().all(|w| *w == format!("{tool}(1)")), "{tool}.1 refers to pages not installed: {pages:?}");
        assert!(text.contains("EXAMPLES AND EXIT STATUS"), "{tool}.1: {text}");
        assert!(tool == "vhdcompact" || text.contains("COMMANDS"), "{tool}.1: {text}");
        let stderr = run(Command::new("man").arg("-l").arg("-Tutf8").arg(&man).env("MANWIDTH", "80"));
        assert!(stderr.stderr.is_empty(), "{tool}.1: {}", String::from_utf8_lossy(&stderr.stderr));
        for shell in ["zsh", "fish", "powershell"] {
            let script = run_ok(bin(tool).args(["--generate", &format!("complete-{shell}")]));
            assert!(String::from_utf8_lossy(&script).contains(tool), "{tool} complete-{shell}");
        }
    }
    let man = String::from_utf8(run_ok(bin("vhdinspect").args(["--generate", "man"]))).unwrap();
    for option in ["--sector", "--svg", "--to"] {
        assert!(man.contains(&option.replace('-', "\\-")), "the man page lacks the command option {option}");
    }
    assert_eq!(run(bin("vhdinspect").args(["--generate", "man", "owner"])).status.code(), Some(2));
    // The bash completion completes a subcommand and an option.
    let script = dir.path().join("vhdinspect.bash");
    std::fs::write(&script, run_ok(bin("vhdinspect").args(["--generate", "complete-bash"]))).unwrap();
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; \
             _vhdinspect vhdinspect '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        String::from_utf8(run_ok(Command::new("bash").arg("-c").arg(program))).unwrap()
    };
    assert!(complete("vhdinspect du").lines().any(|l| l == "dump"), "{}", complete("vhdinspect du"));
    assert!(complete("vhdinspect dump --bl").lines().any(|l| l == "--blocks"), "{}", complete("vhdinspect dump --bl"));
    let out = run(bin("vhdreg").args(["--generate", "pdf"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_json_report_starts_with_its_schema_version() {
    let image = corpus("aligned-dynamic.vhd");
    let img = image.to_str().unwrap();
    let dir = tempdir();
    let out = dir.path().join("out.vhd");
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("vhdinspect", vec!["dump", img, "--json"]),
        ("vhdinspect", vec!["check", img, "--json"]),
        ("vhdinspect", vec!["files", img, "--json"]),
        ("vhdinspect", vec!["map", img, "--json"]),
        ("vhdinspect", vec!["owner", img, "--sector", "2048", "--json"]),
        ("vhdinspect", vec!["ranges", img, "--json"]),
        ("vhdinspect", vec!["align", img, "--json"]),
        ("vhdcompact", vec![img, out.to_str().unwrap(), "--json"]),
        ("vhdcompact", vec!["--what-if", img, "--json"]),
    ];
    for (tool, args) in runs {
        let text = String::from_utf8(run_ok(bin(tool).args(&args))).unwrap();
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(compact.starts_with("{\"schema_version\":2,"), "{tool} {args:?}: {}", &text[..text.len().min(80)]);
    }
}

#[test]
fn files_as_json_lines_equal_the_json_listing() {
    for name in ["aligned-dynamic.vhd", "xp-fixed.vhd", "logical-dynamic.vhd", "gpt-dynamic.vhd"] {
        json_lines_equal_the_json_listing(&corpus(name));
    }
}

fn json_lines_equal_the_json_listing(image: &std::path::Path) {
    let json: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").arg("files").arg(image).arg("--json"))).unwrap();
    let text = String::from_utf8(run_ok(bin("vhdinspect").arg("files").arg(image).arg("--jsonl"))).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().all(|l| l["schema_version"] == 2));
    let of = |kind: &str| lines.iter().filter(|l| l["type"] == kind).cloned().collect::<Vec<_>>();
    let strip = |mut v: serde_json::Value| {
        let o = v.as_object_mut().unwrap();
        o.remove("schema_version");
        o.remove("type");
        v
    };
    // The lines come in MFT record order, the JSON listing in tree order.
    let key = |f: &serde_json::Value| (f["mft_record"].as_u64().unwrap(), f["path"].as_str().unwrap().to_string());
    let mut files: Vec<serde_json::Value> = of("file").into_iter().map(strip).collect();
    let mut listed = json["files"].as_array().unwrap().clone();
    files.sort_by_key(key);
    listed.sort_by_key(key);
    assert!(files.len() > 10, "{}: {} files", image.display(), files.len());
    assert_eq!(files, listed, "{}", image.display());
    let volumes: Vec<serde_json::Value> = of("volume").into_iter().map(strip).collect();
    assert_eq!(serde_json::Value::Array(volumes), json["volumes"]);
    assert_eq!(of("filesystem").len(), json["filesystems"].as_array().unwrap().len());
}

#[test]
fn map_as_json_lines_equals_the_json_map() {
    let image = corpus("aligned-dynamic.vhd");
    let json: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").arg("map").arg(&image).arg("--json"))).unwrap();
    let text = String::from_utf8(run_ok(bin("vhdinspect").arg("map").arg(&image).arg("--jsonl"))).unwrap();
    let mut lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for l in &mut lines {
        assert_eq!(l["schema_version"], 2);
        l.as_object_mut().unwrap().remove("schema_version");
    }
    let summary = lines.pop().unwrap();
    assert_eq!(summary["type"], "summary");
    let blocks: Vec<serde_json::Value> = lines
        .into_iter()
        .map(|mut l| {
            assert_eq!(l.as_object_mut().unwrap().remove("type").unwrap(), "block");
            l
        })
        .collect();
    assert_eq!(serde_json::Value::Array(blocks), json["blocks"]);
    let mut summary = summary;
    summary.as_object_mut().unwrap().remove("type");
    assert_eq!(summary, json["summary"]);
}

#[test]
fn owners_of_a_block_as_json_lines_equal_the_json_answer() {
    let image = corpus("xp-fixed.vhd");
    let args = ["owner", "--block", "4"];
    let json: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(args).arg(&image).arg("--json"))).unwrap();
    let owners = json["owners"].as_array().unwrap();
    assert!(owners.len() > 1, "block 4 of the corpus image holds many files: {json}");
    let text = String::from_utf8(run_ok(bin("vhdinspect").args(args).arg(&image).arg("--jsonl"))).unwrap();
    let mut lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut summary = lines.pop().unwrap();
    let kind = |v: &mut serde_json::Value| {
        let o = v.as_object_mut().unwrap();
        assert_eq!(o.remove("schema_version").unwrap(), 2);
        o.remove("type").unwrap()
    };
    assert_eq!(kind(&mut summary), "summary");
    for l in &mut lines {
        assert_eq!(kind(l), "owner");
    }
    assert_eq!(&lines, owners, "one line per owner, in the order of the JSON answer");
    summary["owners"] = json["owners"].clone();
    let mut json = json;
    json.as_object_mut().unwrap().remove("schema_version");
    assert_eq!(summary, json);
}

#[test]
fn piped_tables_are_plain_columns_within_100_columns() {
    let image = corpus("logical-dynamic.vhd");
    let runs: [&[&str]; 8] = [
        &["dump"],
        &["check"],
        &["files"],
        &["map"],
        &["align"],
        &["ranges"],
        &["owner", "--block", "1"],
        &["owner", "--file", "data/hello.txt"],
    ];
    for args in runs {
        let out = run(bin("vhdinspect").args(args).arg(&image));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        // The image's path is the user's, as long as their folders make it: the width
        // rule is for what the tool lays out around it.
        let text = text.replace(&*image.to_string_lossy(), "IMAGE");
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "{args:?}: a line of {} columns: {line}", line.chars().count());
            assert!(!line.contains(['│', '┆', '─']), "{args:?}: boxes in piped output: {line}");
            assert_eq!(line, line.trim_end(), "{args:?}: trailing blanks");
        }
    }
    let what_if = String::from_utf8(run_ok(bin("vhdcompact").arg("--what-if").arg(&image)))
        .unwrap()
        .replace(&*image.to_string_lossy(), "IMAGE")
        .replace(&*image.parent().unwrap().to_string_lossy(), "FOLDER");
    assert!(what_if.lines().all(|l| l.chars().count() <= 100), "{what_if}");
}

#[test]
fn dry_run_is_refused_where_nothing_would_be_written() {
    let image = corpus("xp-fixed.vhd");
    for command in [&["get", r"HKLM\SYSTEM\Select", "Current"][..], &["list", r"HKLM\SYSTEM"], &["recover"]] {
        let out = run(bin("vhdreg").arg("--dry-run").arg(&image).args(command));
        assert_usage_error(&out, "--dry-run", &["set, delete and import"]);
    }
    let out = run(bin("vhdinspect").args(["dump", "--dry-run"]).arg(&image));
    assert_eq!(out.status.code(), Some(2), "vhdinspect has no --dry-run: it never writes");
    // Only the commands that write offer it, in their help and after them.
    for command in ["get", "list", "export", "recover"] {
        let help = String::from_utf8(run_ok(bin("vhdreg").args([command, "--help"]))).unwrap();
        assert!(!help.contains("--dry-run"), "vhdreg {command} --help: {help}");
        let out = run(bin("vhdreg").arg(&image).args([command, "--dry-run"]));
        assert_eq!(out.status.code(), Some(2), "vhdreg {command} --dry-run");
    }
    for command in ["set", "delete", "import"] {
        let help = String::from_utf8(run_ok(bin("vhdreg").args([command, "--help"]))).unwrap();
        assert!(help.contains("--dry-run"), "vhdreg {command} --help: {help}");
    }
}

/// `cmd` (a shell command line) run on a pseudo-terminal by `script`: what the terminal showed.
fn on_a_terminal(cmd: &str) -> String {
    let out = run_ok(Command::new("script").args(["-qec", cmd, "/dev/null"]));
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let dir = tempdir();
    let image = corpus("xp-fixed.vhd");
    let out = dir.path().join("out.vhd");
    let (compact, inspect) = (env!("CARGO_BIN_EXE_vhdcompact"), env!("CARGO_BIN_EXE_vhdinspect"));
    let shown = on_a_terminal(&format!("{compact} {} {}", image.display(), out.display()));
    assert!(shown.contains("indexing the image") && shown.contains("writing blocks"), "{shown}");
    let quiet = on_a_terminal(&format!("{compact} --quiet --force {} {}", image.display(), out.display()));
    assert!(!quiet.contains("writing blocks"), "--quiet hides it: {quiet}");
    let piped = run(bin("vhdcompact").arg("--force").arg(&image).arg(&out));
    assert!(piped.status.success() && piped.stderr.is_empty(), "{}", String::from_utf8_lossy(&piped.stderr));
    // vhdinspect while it indexes the volumes; its tables boxed on the terminal, within 100
    // columns when the terminal does not say its width.
    let map = on_a_terminal(&format!("{inspect} map {}", image.display()));
    assert!(map.contains("indexing the image") && map.contains('┆'), "{map}");
    assert!(map.lines().filter(|l| l.contains('┆')).all(|l| l.trim_end().chars().count() <= 100), "{map}");
    // vhddisk while a commit writes, in bytes.
    let (parent, child) = (dir.path().join("parent.vhd"), dir.path().join("child.vhd"));
    run_ok(bin("vhddisk").args(["create", "--size", "64M"]).arg(&parent));
    run_ok(bin("vhddisk").arg("create").arg(&child).arg("--parent").arg(&parent));
    let (mut c, _) = vhdkit::DiskImage::open_writable(&child, &Default::default()).unwrap();
    vhdkit::WritableDevice::write_at(&mut c, 1 << 20, &[0x5a; 4 << 20]).unwrap();
    drop(c);
    let commit = on_a_terminal(&format!("{} commit {}", env!("CARGO_BIN_EXE_vhddisk"), child.display()));
    assert!(commit.contains("committing") && commit.contains("MiB"), "{commit}");
}
