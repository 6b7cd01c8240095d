//! The shape of the code, checked: no import cycle between the modules of either crate, the
//! pure core free of runtime, kernel and network dependencies, and no source file or function
//! beyond the size limits without a stated reason. Reads the sources; no root needed.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without comments (line and doc comments), so prose naming a module is no edge.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules named after `crate::` in `code`, `use crate::{a, b::c}` included.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        // `$crate::` in macros is the crate root too, and `edgewatch_core::` is not matched.
        if start > "crate::".len() {
            let before = bytes[start - "crate::".len() - 1];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
        }
        if bytes.get(start) == Some(&b'{') {
            let mut depth = 0;
            let mut item = String::new();
            for &c in &bytes[start..] {
                match c {
                    b'{' => {
                        depth += 1;
                        if depth > 1 {
                            item.push('{');
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        item.push('}');
                    }
                    b',' if depth == 1 => {
                        out.insert(first_ident(&item));
                        item.clear();
                    }
                    _ => item.push(c as char),
                }
            }
            out.insert(first_ident(&item));
        } else {
            out.insert(first_ident(&code[start..]));
        }
    }
    out.remove("");
    out.remove("self");
    out
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Module -> the crate's other top-level modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("name")
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(f).expect("read"));
        graph.entry(top).or_default().extend(crate_refs(&code));
    }
    let tops: BTreeSet<String> = graph.keys().cloned().collect();
    for (name, deps) in graph.iter_mut() {
        deps.retain(|d| tops.contains(d) && d != name);
    }
    graph
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        path.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|p| p == d).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_of_each_crate_has_no_cycle() {
    for src in ["sidecar/src", "sidecar/core/src"] {
        let graph = module_graph(&repo().join(src));
        assert!(graph.len() > 5, "{src}: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{src}: import cycle {}\n{graph:#?}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g).expect("cycle"),
        vec!["a", "b", "c", "a"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    );
    let refs = crate_refs("use crate::{\n    alerts::{Alert, X},\n    config::Config,\n    hop,\n};\nlet x = crate::store::rows::f(); $crate::m::x; edgewatch_core::n;");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["alerts", "config", "hop", "m", "store"]
    );
}

/// The core's normal dependencies: nothing that does I/O, runs tasks or talks to the kernel;
/// `clickhouse` only as the optional feature that derives its row traits.
#[test]
fn the_core_has_no_runtime_kernel_or_network_dependency() {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("sidecar/core/Cargo.toml"))
        .expect("core manifest")
        .parse()
        .expect("toml");
    let deps = manifest["dependencies"].as_table().expect("dependencies");
    let forbidden = [
        "tokio",
        "aya",
        "aya-log",
        "hyper",
        "hyper-util",
        "ureq",
        "rustls",
        "libc",
        "netlink-sys",
        "procfs",
        "axum",
        "caps",
        "libloading",
    ];
    for name in deps.keys() {
        assert!(
            !forbidden.contains(&name.as_str()),
            "the core depends on {name}"
        );
    }
    let ch = deps["clickhouse"].as_table().expect("clickhouse entry");
    assert_eq!(ch["optional"].as_bool(), Some(true));
    assert_eq!(ch["default-features"].as_bool(), Some(false));
    // The drivers are not in the core.
    let lib = std::fs::read_to_string(repo().join("sidecar/core/src/lib.rs")).expect("lib.rs");
    for m in ["cmd", "store::ship", "sources", "probe::loader", "metrics"] {
        assert!(!lib.contains(&format!("pub mod {m};")), "{m} in the core");
    }
}

/// Lines a source file may have, and a function, before its top must say why it is longer.
const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 120;

/// `(name, first line, lines)` of every `fn` body in `text` (braces counted outside string
/// and char literals and comments).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let Some(pos) = t.find("fn ") else { continue };
        let head = &t[..pos];
        if !(head.is_empty()
            || head.split_whitespace().all(|w| {
                matches!(w, "pub" | "async" | "const" | "unsafe" | "extern")
                    || w.starts_with("pub(")
            }))
        {
            continue;
        }
        let name = first_ident(&t[pos + 3..]);
        // Find the body's opening brace (or a `;`: a declaration), then its end.
        let mut depth = 0i32;
        let mut opened = false;
        let mut end = None;
        'outer: for (j, line) in lines.iter().enumerate().skip(i) {
            let mut chars = line.chars().peekable();
            let mut in_str = false;
            while let Some(c) = chars.next() {
                if in_str {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                match c {
                    '/' if chars.peek() == Some(&'/') => break,
                    '"' => in_str = true,
                    '\'' => {
                        // A char literal ('{', '\'') or a lifetime ('a).
                        let rest: String = chars.clone().take(3).collect();
                        if rest.starts_with('\\') {
                            chars.next();
                            chars.next();
                            chars.next();
                        } else if rest.chars().nth(1) == Some('\'') {
                            chars.next();
                            chars.next();
                        }
                    }
                    ';' if !opened => break 'outer,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            end = Some(j);
                            break 'outer;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(e) = end {
            out.push((name, i + 1, e - i + 1));
        }
    }
    out
}

/// Whether the lines just above line `at` (1-based) state why the item is long.
fn reason_stated(lines: &[&str], at: usize) -> bool {
    lines[..at.saturating_sub(1)]
        .iter()
        .rev()
        .take_while(|l| {
            let t = l.trim_start();
            t.starts_with("//") || t.starts_with("#[")
        })
        .any(|l| l.contains("Long because"))
}

#[test]
fn no_file_or_function_is_over_the_limits_without_a_reason() {
    let mut files = Vec::new();
    for src in ["sidecar/src", "sidecar/core/src", "xtask/src"] {
        rust_files(&repo().join(src), &mut files);
    }
    let mut over = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > MAX_FILE_LINES
            && !lines.iter().take(12).any(|l| l.contains("Long because"))
        {
            over.push(format!("{}: {} lines", f.display(), lines.len()));
        }
        for (name, at, n) in functions(&text) {
            if n > MAX_FN_LINES && !reason_stated(&lines, at) {
                over.push(format!("{}:{at}: fn {name} has {n} lines", f.display()));
            }
        }
    }
    assert!(
        over.is_empty(),
        "over the limits ({MAX_FILE_LINES} lines a file, {MAX_FN_LINES} a function) with no \
         `Long because` at the top:\n{}",
        over.join("\n")
    );
}

#[test]
fn the_size_check_measures_functions() {
    let text = "fn a() {\n    let s = \"}\";\n    let c = '{';\n}\n\npub(crate) async fn b(x: &'static str) -> u8 {\n    // }\n    1\n}\nfn decl();\n";
    assert_eq!(
        functions(text),
        vec![("a".to_owned(), 1, 4), ("b".to_owned(), 6, 4)]
    );
}
