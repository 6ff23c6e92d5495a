//! The documentation matches the code: every flag and `STOCKFLOW_*` variable the binary takes
//! is in the README (read from clap's own command definition and from the sources, not from a
//! list kept by hand); every repository path the README and `docs/` name exists, down to the
//! test function or the section they point at; and every `stockflow` command in their shell
//! blocks runs: those that only read a lake or write files run for real against a demo lake,
//! the ones that serve or connect are checked with `--check-config`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use stockflow::cli::Cli;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents a newcomer reads: the README and everything in `docs/`.
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths.into_iter().map(|p| (p.clone(), read(&p))).collect()
}

/// Whether `text` holds `word` as a whole token (not as the prefix of a longer flag or name).
fn mentions(text: &str, word: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(name_char) && !after.is_some_and(name_char)
    })
}

/// Every `--flag`, `-f` and environment variable of a command and its subcommands.
fn cli_names(cmd: &clap::Command, out: &mut BTreeSet<(String, String)>) {
    let name = cmd.get_name().to_owned();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long().filter(|l| !matches!(*l, "help" | "version")) {
            out.insert((name.clone(), format!("--{long}")));
        }
        if let Some(short) = arg.get_short() {
            out.insert((name.clone(), format!("-{short}")));
        }
        if let Some(env) = arg.get_env() {
            out.insert((name.clone(), env.to_string_lossy().into_owned()));
        }
    }
    for sub in cmd.get_subcommands() {
        cli_names(sub, out);
    }
}

/// Every `STOCKFLOW_*` name spelled in the sources (read with `std::env` or given to clap).
fn variables_in_sources() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for path in std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()) {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = read(&path);
                for (at, _) in text.match_indices("\"STOCKFLOW_") {
                    let name: String = text[at + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    out.insert(name);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&repo().join("src"), &mut out);
    out
}

#[test]
fn every_flag_and_variable_is_in_the_readme() {
    let readme = read(&repo().join("README.md"));
    let mut names = BTreeSet::new();
    cli_names(&Cli::command(), &mut names);
    assert!(names.len() > 50, "clap's definition gave only {} names", names.len());
    let mut missing: Vec<String> =
        names.iter().filter(|(_, name)| !mentions(&readme, name)).map(|(cmd, name)| format!("{cmd} {name}")).collect();
    let variables = variables_in_sources();
    assert!(variables.contains("STOCKFLOW_LAKE"), "no STOCKFLOW_ variable found in src/: {variables:?}");
    missing.extend(variables.iter().filter(|v| !mentions(&readme, v)).map(|v| format!("variable {v}")));
    assert!(missing.is_empty(), "in the code but not in README.md:\n  {}", missing.join("\n  "));
}

#[test]
fn mentions_matches_whole_names_only() {
    assert!(mentions("run with --bars 1m", "--bars"));
    assert!(!mentions("run with --bars-per 1m", "--bars"));
    assert!(!mentions("run with --rows-per-file", "--file"));
    assert!(mentions("flags -w 2", "-w"));
    assert!(!mentions("stockflow-ingest", "-ingest"));
    assert!(mentions("`STOCKFLOW_LAKE`,", "STOCKFLOW_LAKE"));
    assert!(!mentions("STOCKFLOW_LAKE_X", "STOCKFLOW_LAKE"));
}

/// The GitHub anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown.lines().filter_map(|l| l.strip_prefix('#')).map(|h| anchor(h.trim_start_matches('#'))).collect()
}

/// Tokens of a text that name something in the repository: they start with one of its
/// top-level entries and a slash (`src/lake/writer.rs`, `athena/queries/`), or are one of its
/// top-level files (`BENCHMARKS.md`); optionally followed by `::function` or `#section`.
fn repo_paths(text: &str, top: &BTreeSet<String>) -> BTreeSet<String> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_./*-:#".contains(c);
    let mut out = BTreeSet::new();
    for token in text.split(|c: char| !path_char(c)) {
        let token = token.trim_end_matches(['.', ':', '-']);
        let first = token.split(['/', ':', '#']).next().unwrap_or_default();
        let in_repo = top.contains(first) && (token.contains('/') || first.contains('.'));
        if in_repo && !token.starts_with('/') {
            out.insert(token.to_owned());
        }
    }
    out
}

/// The repository's top-level entries that a clean clone has (not build output or a demo lake).
fn top_level() -> BTreeSet<String> {
    let ignored: BTreeSet<String> = read(&repo().join(".gitignore"))
        .lines()
        .map(|l| l.trim_matches('/').to_owned())
        .filter(|l| !l.is_empty() && !l.contains('*'))
        .collect();
    std::fs::read_dir(repo())
        .expect("repo")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !ignored.contains(n))
        .collect()
}

/// Checks one named path: the file or folder exists (a `*` matches within one folder), a
/// `::name` suffix is a function or test in that file, a `#section` a heading of that document.
fn check_path(token: &str) -> Result<(), String> {
    let (path, function) = token.split_once("::").map_or((token, None), |(p, f)| (p, Some(f)));
    let (path, section) = path.split_once('#').map_or((path, None), |(p, s)| (p, Some(s)));
    let full = repo().join(path);
    if path.contains('*') {
        let dir = full.parent().filter(|d| !d.to_string_lossy().contains('*'));
        let suffix = path.rsplit('*').next().unwrap_or_default();
        let matched = dir.is_some_and(|d| {
            d.is_dir()
                && std::fs::read_dir(d)
                    .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(suffix)))
                    .unwrap_or(false)
        });
        return if matched || dir.is_none() { Ok(()) } else { Err(format!("{token}: nothing matches")) };
    }
    if !full.exists() {
        return Err(format!("{token}: no such file or folder"));
    }
    if let Some(function) = function {
        if !read(&full).contains(&format!("fn {function}(")) {
            return Err(format!("{token}: {path} has no fn {function}"));
        }
    }
    if let Some(section) = section {
        if !anchors(&read(&full)).contains(section) {
            return Err(format!("{token}: {path} has no section #{section}"));
        }
    }
    Ok(())
}

#[test]
fn every_path_the_docs_name_exists() {
    let top = top_level();
    assert!(top.contains("src") && top.contains("dataflows"), "top-level entries: {top:?}");
    let mut checked = 0;
    let mut missing = Vec::new();
    for (doc, text) in documents() {
        let own = anchors(&text);
        for token in repo_paths(&text, &top) {
            checked += 1;
            if let Err(e) = check_path(&token) {
                missing.push(format!("{}: {e}", doc.display()));
            }
        }
        // Links within the document: `(#section)`.
        for (at, _) in text.match_indices("(#") {
            let section: String = text[at + 2..].chars().take_while(|c| *c != ')').collect();
            if !own.contains(&section) {
                missing.push(format!("{}: no section #{section}", doc.display()));
            }
        }
    }
    assert!(checked > 30, "only {checked} paths found in the docs");
    assert!(missing.is_empty(), "the docs name what does not exist:\n  {}", missing.join("\n  "));
}

/// Code comments that point to a document point to one the repository holds (and to a
/// section it has).
#[test]
fn documents_the_code_points_to_exist() {
    let top = top_level();
    let mut missing = Vec::new();
    let mut checked = 0;
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for path in std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()) {
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["src", "dataflows/src", "dataflows/tests", "tests", "benches"] {
        sources(&repo().join(dir), &mut files);
    }
    for file in files {
        let text = read(&file);
        for token in text.split(|c: char| c.is_whitespace() || "`()[],;\"'".contains(c)) {
            let token = token.trim_end_matches(['.', ':']);
            let doc = token.split('#').next().unwrap_or_default();
            // A document's name, not the extension alone (as in this test's own code).
            if doc.strip_suffix(".md").is_none_or(|stem| stem.is_empty()) || doc.contains('{') {
                continue;
            }
            checked += 1;
            let first = doc.split('/').next().unwrap_or_default();
            let result = if top.contains(first) || doc.contains('/') {
                check_path(token)
            } else {
                Err(format!("{token}: not a path in the repository"))
            };
            if let Err(e) = result {
                missing.push(format!("{}: {e}", file.strip_prefix(repo()).unwrap_or(&file).display()));
            }
        }
    }
    assert!(checked > 0, "no document named in the sources");
    assert!(missing.is_empty(), "the code points to documents that do not exist:\n  {}", missing.join("\n  "));
}

/// The lines of a document's shell blocks, continuations joined, comments dropped.
fn shell_lines(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = !in_block && matches!(trimmed, "```sh" | "```bash");
            continue;
        }
        if !in_block {
            continue;
        }
        let code = match trimmed.find(" #") {
            Some(at) if !trimmed[..at].contains('"') || trimmed[..at].matches('"').count() % 2 == 0 => &trimmed[..at],
            _ => trimmed,
        };
        if let Some(head) = code.trim_end().strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
        } else {
            pending.push_str(code.trim_end());
            if !pending.trim().is_empty() {
                out.push(std::mem::take(&mut pending).trim().to_owned());
            }
            pending.clear();
        }
    }
    out
}

/// A demo lake in a folder laid out as the README's commands expect (`./lake`, `athena/`).
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["demo", "--trades", "20000", "--lake"])
        .arg(dir.path().join("lake"))
        .output()
        .expect("demo");
    assert!(out.status.success(), "demo: {}", String::from_utf8_lossy(&out.stderr));
    for shared in ["athena", "glue"] {
        std::os::unix::fs::symlink(repo().join(shared), dir.path().join(shared)).expect("symlink");
    }
    // What the README's pipeline by hand reads from its earlier steps.
    std::fs::write(dir.path().join("kafka.addr"), "127.0.0.1:9092").expect("kafka.addr");
    std::fs::write(dir.path().join("symbols.txt"), "AAPL\nMSFT\n").expect("symbols.txt");
    // The cluster guide's host file, which it keeps in /etc/stockflow/.
    std::fs::write(dir.path().join("hosts.txt"), "10.0.1.10:2101\n10.0.1.11:2101\n10.0.1.12:2101\n")
        .expect("hosts.txt");
    dir
}

/// Subcommands that only read a lake or write files, so a doc's line runs as written.
const OFFLINE: &[&str] = &["sql", "status", "plot", "catalog"];

#[test]
fn every_stockflow_command_in_the_docs_runs() {
    let dir = workspace();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_stockflow"));
    let path = format!("{}:{}", bin.parent().expect("bin dir").display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    let mut checked = 0;
    let mut failures = Vec::new();
    for (doc, text) in documents() {
        for line in shell_lines(&text).into_iter().filter(|l| l.starts_with("stockflow ")) {
            let line = line.trim_end_matches('&').trim().replace("/etc/stockflow/", "");
            let sub = line.split_whitespace().nth(1).unwrap_or_default();
            let remote = line.contains("s3://") || line.contains("--create-in");
            let listing = sub == "simulate" && line.contains("--list-symbols");
            let real = (OFFLINE.contains(&sub) && !remote) || listing;
            // A command that serves or connects: everything it needs is checked, nothing started.
            let command = if real {
                line.clone()
            } else if let Some((head, redirect)) = line.split_once(" > ") {
                format!("{head} --check-config > {redirect}")
            } else {
                format!("{line} --check-config")
            };
            let out = Command::new("sh")
                .args(["-c", &command])
                .current_dir(dir.path())
                .env("PATH", &path)
                .env("AWS_REGION", "us-east-1")
                .output()
                .expect("sh");
            if real {
                ran += 1
            } else {
                checked += 1
            }
            if !out.status.success() {
                failures.push(format!(
                    "{}: `{command}`: {}",
                    doc.strip_prefix(repo()).unwrap_or(&doc).display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert!(ran >= 3 && checked >= 3, "{ran} commands run and {checked} checked: the shell blocks were not found");
    assert!(failures.is_empty(), "commands in the docs fail:\n  {}", failures.join("\n  "));
}
