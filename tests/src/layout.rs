//! The import graph of the workspace's crates: one node per file-level
//! module, an edge wherever a file names another module of its crate
//! (`use crate::…`, `use super::…`, or a `crate::x::`/`super::x::` path in
//! code). A cycle in that graph means two files cannot be read, changed or
//! tested apart; [`cycles`] finds them and names their files.
//!
//! A parent's `mod child;` is not an edge (declaring is not depending), but
//! a parent calling into a child is, and so is a child reaching into its
//! parent: a `mod.rs` and its children are separate nodes, because that
//! pair is exactly where "the loop imports its services and the services
//! import the loop" hides. Inline modules belong to their file's node,
//! except `#[cfg(test)]` ones, which are left out: unit tests are leaves
//! nothing imports, and a test that builds its input with a module further
//! up (a `HostConfig` to test the cluster settings) ties no production code
//! together.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside one crate: `[]` is the crate root, `["agent",
/// "server"]` is `crate::agent::server`.
pub type ModPath = Vec<String>;

/// One crate's module tree and the edges between its modules.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every module with the file it lives in.
    pub modules: BTreeMap<ModPath, PathBuf>,
    /// From a module to the modules it names.
    pub edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

/// Reads the crate whose root file is `root` (`lib.rs` or `main.rs`),
/// following its `mod name;` declarations.
pub fn read_crate(root: &Path) -> std::io::Result<Graph> {
    let mut sources = BTreeMap::new();
    let mut pending = vec![(Vec::new(), root.to_path_buf())];
    while let Some((path, file)) = pending.pop() {
        let text = std::fs::read_to_string(&file)?;
        let code = strip_comments(&text);
        // A root or a `mod.rs` keeps its children beside it; `foo.rs` keeps
        // them in `foo/`.
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "main.rs" | "mod.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        for child in declared_modules(&code) {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let child_file = if flat.exists() { flat } else { nested };
            if child_file.exists() {
                let mut child_path = path.clone();
                child_path.push(child);
                pending.push((child_path, child_file));
            }
        }
        sources.insert(path, (file, code));
    }
    let mut graph = Graph::default();
    for (path, (file, _)) in &sources {
        graph.modules.insert(path.clone(), file.clone());
    }
    let sources: Vec<(ModPath, String)> = sources.into_iter().map(|(path, (_, code))| (path, code)).collect();
    fill_edges(&mut graph, &sources);
    Ok(graph)
}

/// Builds a graph from in-memory sources: `(module path, code)`. For tests
/// of the checker itself.
pub fn graph_of(sources: &[(&str, &str)]) -> Graph {
    let parse = |p: &str| -> ModPath {
        p.split("::")
            .filter(|s| !s.is_empty() && *s != "crate")
            .map(str::to_string)
            .collect()
    };
    let mut graph = Graph::default();
    for (path, _) in sources {
        graph.modules.insert(parse(path), PathBuf::from(path));
    }
    let sources: Vec<(ModPath, String)> = sources
        .iter()
        .map(|(path, code)| (parse(path), strip_comments(code)))
        .collect();
    fill_edges(&mut graph, &sources);
    graph
}

/// Names re-exported by a module (`pub use x::Item;`), with the module the
/// item really lives in: a path through a facade goes to the item's home,
/// so that `lib.rs`'s `pub use loader::Dataplane` does not make every user
/// of `crate::Dataplane` depend on the whole crate root.
type Reexports = BTreeMap<(ModPath, String), ModPath>;

fn fill_edges(graph: &mut Graph, sources: &[(ModPath, String)]) {
    let mut reexports = Reexports::new();
    for (path, code) in sources {
        let tokens = tokenize(code);
        for (k, t) in tokens.iter().enumerate() {
            if t != "use" || k == 0 || !(tokens[k - 1] == "pub" || tokens[k - 1] == ")") {
                continue;
            }
            let end = tokens[k..]
                .iter()
                .position(|t| t == ";")
                .map_or(tokens.len(), |e| k + e);
            for (used, alias) in expand_use_named(&tokens[k + 1..end]) {
                if let Some((target, _)) = resolve(path, 0, &used, &graph.modules)
                    && let Some(name) = alias.or_else(|| used.last().cloned())
                    && &target != path
                {
                    reexports.insert((path.clone(), name), target);
                }
            }
        }
    }
    for (path, code) in sources {
        let targets = references(path, code, &graph.modules, &reexports);
        graph.edges.insert(path.clone(), targets);
    }
}

/// The cycles of the graph: each strongly connected component of more than
/// one module, as its files, sorted. Empty when the graph is acyclic.
pub fn cycles(graph: &Graph) -> Vec<Vec<PathBuf>> {
    let nodes: Vec<&ModPath> = graph.modules.keys().collect();
    let index: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let adjacency: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            graph
                .edges
                .get(*n)
                .into_iter()
                .flatten()
                .filter_map(|t| index.get(t).copied())
                .collect()
        })
        .collect();
    tarjan(&adjacency)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let mut files: Vec<PathBuf> = component.iter().map(|&i| graph.modules[nodes[i]].clone()).collect();
            files.sort();
            files
        })
        .collect()
}

/// One path around a cycle that contains `from`, for the failure message:
/// `a -> b -> c -> a`.
pub fn describe_cycle(graph: &Graph, component: &[PathBuf]) -> String {
    let members: BTreeSet<&ModPath> = graph
        .modules
        .iter()
        .filter(|(_, f)| component.contains(f))
        .map(|(p, _)| p)
        .collect();
    let Some(start) = members.iter().next().copied() else {
        return String::new();
    };
    // Breadth-first from the start back to itself, inside the component.
    let mut came_from: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut end = None;
    'search: while let Some(node) = queue.pop_front() {
        for next in graph.edges.get(node).into_iter().flatten() {
            if !members.contains(next) {
                continue;
            }
            if next == start {
                end = Some(node);
                break 'search;
            }
            if !came_from.contains_key(next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    let mut chain = vec![start];
    let mut node = end.unwrap_or(start);
    while node != start {
        chain.push(node);
        node = came_from[node];
    }
    chain.push(start);
    chain.reverse();
    chain.iter().map(|p| display(p)).collect::<Vec<_>>().join(" -> ")
}

/// Every edge between the members of a cycle, one `from -> to` a line: what
/// to cut.
pub fn cycle_edges(graph: &Graph, component: &[PathBuf]) -> Vec<String> {
    let members: BTreeSet<&ModPath> = graph
        .modules
        .iter()
        .filter(|(_, f)| component.contains(f))
        .map(|(p, _)| p)
        .collect();
    let mut out = Vec::new();
    for from in &members {
        for to in graph.edges.get(*from).into_iter().flatten() {
            if members.contains(to) {
                out.push(format!("{} -> {}", display(from), display(to)));
            }
        }
    }
    out
}

/// `crate::agent::server` style name of a module.
pub fn display(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".to_string()
    } else {
        format!("crate::{}", path.join("::"))
    }
}

fn tarjan(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adjacency: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.adjacency[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let n = adjacency.len();
    let mut s = State {
        adjacency,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.components
}

/// Blanks out comments and string literals so that paths in docs or
/// messages are not taken for imports.
fn strip_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(text.len(), |e| i + e);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(text.len(), |e| i + e + 2);
            out.push(' ');
            i = end;
        } else if rest.starts_with("r\"") || rest.starts_with("r#\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..]
                .find(&close)
                .map_or(text.len(), |e| i + body + e + close.len());
            out.push_str("\"\"");
            i = end;
        } else if bytes[i] == b'"' && !is_char_literal_quote(text, i) {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = (j + 1).min(bytes.len());
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `'"'` is a character, not the start of a string.
fn is_char_literal_quote(text: &str, i: usize) -> bool {
    i > 0 && text.as_bytes()[i - 1] == b'\'' && text.as_bytes().get(i + 1) == Some(&b'\'')
}

/// The `mod name;` declarations of a file (not inline `mod name { … }`).
fn declared_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let tokens = tokenize(code);
    for (k, t) in tokens.iter().enumerate() {
        if t == "mod"
            && let (Some(name), Some(semi)) = (tokens.get(k + 1), tokens.get(k + 2))
            && semi == ";"
            && is_ident(name)
        {
            out.push(name.clone());
        }
    }
    out
}

fn is_ident(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::` and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// The modules a file's code names, resolved against the crate's modules:
/// each path goes to the deepest module it spells out.
fn references(
    here: &ModPath,
    code: &str,
    modules: &BTreeMap<ModPath, PathBuf>,
    reexports: &Reexports,
) -> BTreeSet<ModPath> {
    let through = |found: Option<(ModPath, Option<String>)>| -> Option<ModPath> {
        let (module, next) = found?;
        match next.and_then(|name| reexports.get(&(module.clone(), name))) {
            Some(home) => Some(home.clone()),
            None => Some(module),
        }
    };
    let tokens = tokenize(code);
    let mut found = BTreeSet::new();
    // Inline modules opened so far, by the brace depth their body starts at.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut k = 0;
    while k < tokens.len() {
        let t = tokens[k].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last() == Some(&(depth + 1)) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(k + 2).map(String::as_str) == Some("{") => {
                if is_test_only(&tokens, k) {
                    k = skip_block(&tokens, k + 2);
                    continue;
                }
                inline.push(depth + 1);
            }
            "use" => {
                let end = tokens[k..]
                    .iter()
                    .position(|t| t == ";")
                    .map_or(tokens.len(), |e| k + e);
                for path in expand_use(&tokens[k + 1..end]) {
                    if let Some(target) = through(resolve(here, inline.len(), &path, modules)) {
                        found.insert(target);
                    }
                }
                k = end;
                continue;
            }
            "crate" | "super" | "self"
                if tokens.get(k + 1).map(String::as_str) == Some("::") && (k == 0 || tokens[k - 1] != "::") =>
            {
                let mut path = vec![t.to_string()];
                let mut j = k + 1;
                while tokens.get(j).map(String::as_str) == Some("::") && tokens.get(j + 1).is_some_and(|s| is_ident(s))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                if let Some(target) = through(resolve(here, inline.len(), &path, modules)) {
                    found.insert(target);
                }
                k = j;
                continue;
            }
            // `child::item` in code: a path through a child module.
            name if inline.is_empty()
                && is_ident(name)
                && tokens.get(k + 1).map(String::as_str) == Some("::")
                && (k == 0 || tokens[k - 1] != "::")
                && modules.contains_key(&[here.as_slice(), &[name.to_string()]].concat()) =>
            {
                let mut path = vec![name.to_string()];
                let mut j = k + 1;
                while tokens.get(j).map(String::as_str) == Some("::") && tokens.get(j + 1).is_some_and(|s| is_ident(s))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                if let Some(target) = through(resolve(here, 0, &path, modules)) {
                    found.insert(target);
                }
                k = j;
                continue;
            }
            _ => {}
        }
        k += 1;
    }
    found.remove(here);
    found
}

/// Whether the `mod` at `k` follows `#[cfg(test)]` (possibly `pub mod`).
fn is_test_only(tokens: &[String], k: usize) -> bool {
    let start = if k > 0 && tokens[k - 1] == "pub" { k - 1 } else { k };
    let attr = ["#", "[", "cfg", "(", "test", ")", "]"];
    start >= attr.len() && tokens[start - attr.len()..start].iter().zip(attr).all(|(t, a)| t == a)
}

/// The index just past the block whose `{` is at `open`.
fn skip_block(tokens: &[String], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Flattens a use tree (`crate::{a::b, c::{d, e}}`) into its paths.
fn expand_use(tokens: &[String]) -> Vec<Vec<String>> {
    expand_use_named(tokens).into_iter().map(|(path, _)| path).collect()
}

/// The paths of a use tree, each with its `as` alias.
fn expand_use_named(tokens: &[String]) -> Vec<(Vec<String>, Option<String>)> {
    type Out = Vec<(Vec<String>, Option<String>)>;
    fn tree(tokens: &[String], k: &mut usize, prefix: &[String], out: &mut Out) {
        let mut path = prefix.to_vec();
        let mut alias = None;
        while *k < tokens.len() {
            match tokens[*k].as_str() {
                "::" => *k += 1,
                "{" => {
                    *k += 1;
                    loop {
                        tree(tokens, k, &path, out);
                        match tokens.get(*k).map(String::as_str) {
                            Some(",") => *k += 1,
                            Some("}") => {
                                *k += 1;
                                return;
                            }
                            _ => return,
                        }
                        if tokens.get(*k).map(String::as_str) == Some("}") {
                            *k += 1;
                            return;
                        }
                    }
                }
                "," | "}" => break,
                "as" => {
                    alias = tokens.get(*k + 1).cloned();
                    *k += 2;
                }
                "*" => *k += 1,
                ident => {
                    path.push(ident.to_string());
                    *k += 1;
                }
            }
        }
        out.push((path, alias));
    }
    let mut out = Vec::new();
    let mut k = 0;
    let start = usize::from(tokens.first().is_some_and(|t| t == "pub"));
    let mut k_start = start;
    // `pub(crate) use …`
    if tokens.get(k_start).map(String::as_str) == Some("(") {
        k_start = tokens.iter().position(|t| t == ")").map_or(k_start, |p| p + 1);
    }
    k += k_start;
    tree(tokens, &mut k, &[], &mut out);
    out
}

/// The module a path names, if it is a path inside this crate: the deepest
/// existing module along it. `self::x` names a child, `super::` climbs (an
/// inline module's first `super` stays in the file).
fn resolve(
    here: &ModPath,
    inline_depth: usize,
    path: &[String],
    modules: &BTreeMap<ModPath, PathBuf>,
) -> Option<(ModPath, Option<String>)> {
    let mut base: ModPath;
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &path[1..];
        }
        Some("super") => {
            let supers = path.iter().take_while(|s| *s == "super").count();
            base = here.clone();
            let climbs = supers.saturating_sub(inline_depth);
            for _ in 0..climbs {
                base.pop()?;
            }
            rest = &path[supers..];
            if climbs == 0 {
                // Still inside this file: only a named child could be
                // another node.
                return descend(base, rest, modules).filter(|(t, _)| t != here);
            }
        }
        Some("self") => {
            base = here.clone();
            rest = &path[1..];
        }
        _ => {
            // A bare `use name::…` names a child module of this one (2018
            // paths) when one by that name exists; otherwise another crate.
            let mut child = here.clone();
            child.push(path.first()?.clone());
            if modules.contains_key(&child) && inline_depth == 0 {
                base = here.clone();
            } else {
                return None;
            }
        }
    }
    descend(base, rest, modules)
}

/// The deepest module along `rest` from `base`, and the name that follows
/// it (an item, or nothing).
fn descend(
    mut base: ModPath,
    rest: &[String],
    modules: &BTreeMap<ModPath, PathBuf>,
) -> Option<(ModPath, Option<String>)> {
    for segment in rest {
        base.push(segment.clone());
        if !modules.contains_key(&base) {
            base.pop();
            return Some((base, Some(segment.clone())));
        }
    }
    Some((base, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cycle_through_a_parent_and_its_children() {
        let graph = graph_of(&[
            ("crate", "pub mod agent;"),
            ("crate::agent", "mod server; use self::server::serve; pub struct State;"),
            ("crate::agent::server", "use super::State; pub fn serve() {}"),
        ]);
        let found = cycles(&graph);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0],
            vec![PathBuf::from("crate::agent"), PathBuf::from("crate::agent::server")]
        );
        let text = describe_cycle(&graph, &found[0]);
        assert!(text.contains("crate::agent::server"), "{text}");
    }

    #[test]
    fn finds_a_cycle_through_grouped_uses_and_inline_paths() {
        let graph = graph_of(&[
            ("crate::a", "use crate::{b::{self, x}, c as _};"),
            ("crate::b", "fn f() { crate::c::g(); }"),
            ("crate::c", "fn g() { let _ = crate::a::Thing; }"),
            ("crate::d", "use crate::a::Thing;"),
        ]);
        let found = cycles(&graph);
        assert_eq!(
            found,
            vec![vec![
                PathBuf::from("crate::a"),
                PathBuf::from("crate::b"),
                PathBuf::from("crate::c")
            ]]
        );
    }

    #[test]
    fn a_tree_has_no_cycle() {
        let graph = graph_of(&[
            ("crate", "pub mod a; pub mod b;"),
            ("crate::a", "use crate::b::x; // crate::a::y in a comment\n"),
            (
                "crate::b",
                "const S: &str = \"crate::a::y\"; mod tests { use super::*; }",
            ),
        ]);
        assert!(cycles(&graph).is_empty(), "{:?}", graph.edges);
    }

    #[test]
    fn a_facade_reexport_is_not_a_cycle_but_its_home_is() {
        let facade = [
            ("crate", "pub mod loader; pub mod ct; pub use loader::Dataplane;"),
            ("crate::loader", "pub struct Dataplane; fn f() { crate::ct::tick(); }"),
        ];
        let user = ("crate::ct", "use crate::Dataplane; pub fn tick() {}");
        let acyclic = graph_of(&[facade[0], ("crate::loader", "pub struct Dataplane;"), user]);
        assert!(cycles(&acyclic).is_empty(), "{:?}", acyclic.edges);
        let cyclic = graph_of(&[facade[0], facade[1], user]);
        assert_eq!(
            cycles(&cyclic),
            vec![vec![PathBuf::from("crate::ct"), PathBuf::from("crate::loader")]]
        );
    }

    #[test]
    fn a_child_path_in_code_is_an_edge() {
        let graph = graph_of(&[
            ("crate", "mod setup; pub fn run() {} fn main() { setup::install(); }"),
            ("crate::setup", "pub fn install() { crate::run(); }"),
        ]);
        assert_eq!(
            cycles(&graph),
            vec![vec![PathBuf::from("crate"), PathBuf::from("crate::setup")]]
        );
    }

    #[test]
    fn a_test_only_module_is_left_out() {
        let graph = graph_of(&[
            ("crate::a", "use crate::b::x;"),
            ("crate::b", "pub fn x() {}\n#[cfg(test)]\nmod tests { use crate::a; }"),
        ]);
        assert!(cycles(&graph).is_empty(), "{:?}", graph.edges);
    }

    #[test]
    fn an_inline_test_module_stays_in_its_file() {
        let graph = graph_of(&[
            ("crate::a", "use crate::b::x;"),
            ("crate::b", "pub fn x() {} #[cfg(test)] mod tests { use super::x; }"),
        ]);
        assert!(cycles(&graph).is_empty(), "{:?}", graph.edges);
        assert!(graph.edges[&vec!["b".to_string()]].is_empty());
    }
}
