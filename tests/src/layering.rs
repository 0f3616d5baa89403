//! The layering check: within each crate of the workspace, the top-level modules of
//! `src/` must not import each other in a cycle, so that every crate's modules can be
//! read in one direction (its `lib.rs` says which).
//!
//! An edge `a -> b` is a path into top-level module `b` in the non-test code of module `a`
//! (any of its files): `crate::b::…`, `use crate::{b, c::d}` groups, `pub use`, `super::b`
//! from where `super` is the crate root, and names the crate root re-exports
//! (`crate::Broker` when `lib.rs` has `pub use broker::Broker`). Items defined in the crate
//! root itself make it a node too ([`ROOT`]), so a module reaching up into `lib.rs` shows as
//! the cycle it is. Code under `#[cfg(test)]` is left out, as are comments and string
//! literals. Files are found as rustc finds them (`x.rs` or `x/mod.rs`); `#[path]` and
//! glob imports of the crate root are refused rather than guessed at.
//!
//! Each crate root also opens with a map of the crate: its modules in layer order, one
//! ``//! - `name`: what it is`` line each. [`CrateGraph::check_order`] holds the map to
//! the imports, so that it stays true: every module listed, none importing one above it.
//!
//! Standard library only: it reads sources with a tiny lexer rather than a Rust parser.

mod lexer;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use lexer::{non_test_tokens, skip_block, Tok, Token};

/// The crate root (`lib.rs`, `main.rs`) as a node of the graph.
pub const ROOT: &str = "(crate root)";

/// Where an edge was seen first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The import graph of one crate's top-level modules.
#[derive(Debug, Clone, Default)]
pub struct CrateGraph {
    /// The crate root file.
    pub root: PathBuf,
    /// The top-level modules the root declares.
    pub modules: BTreeSet<String>,
    /// from -> to -> the first place `from` uses `to`.
    pub edges: BTreeMap<String, BTreeMap<String, Site>>,
}

impl CrateGraph {
    /// Whether `from` imports `to`.
    pub fn has_edge(&self, from: &str, to: &str) -> bool {
        self.edges.get(from).is_some_and(|e| e.contains_key(to))
    }

    fn add(&mut self, from: &str, to: &str, site: Site) {
        if from != to {
            self.edges
                .entry(from.to_owned())
                .or_default()
                .entry(to.to_owned())
                .or_insert(site);
        }
    }

    /// How the crate's map (its modules listed in layer order in the root's `//!` docs, see
    /// [`documented_order`]) disagrees with the graph: a module it does not list, or an
    /// import of a module listed above the importer. Empty when they agree.
    pub fn check_order(&self, order: &[String]) -> Vec<String> {
        let root = self.root.display();
        let position = |m: &str| order.iter().position(|o| o == m);
        let mut problems: Vec<String> = self
            .modules
            .iter()
            .filter(|m| position(m).is_none())
            .map(|m| format!("{root}: module {m} is not in the crate map"))
            .collect();
        for (from, to) in &self.edges {
            for (target, site) in to {
                if let (Some(a), Some(b)) = (position(from), position(target)) {
                    if a > b {
                        problems.push(format!(
                            "{root}: {from} imports {target} ({site}), which the crate map lists above it"
                        ));
                    }
                }
            }
        }
        problems
    }

    /// Every cycle, one per strongly connected group of modules, spelled out with where
    /// each import is (`a -> b (a.rs:3) -> a (b.rs:7)`); empty when the graph is acyclic.
    pub fn cycles(&self) -> Vec<String> {
        strongly_connected(self)
            .into_iter()
            .filter(|group| group.len() > 1)
            .map(|group| self.describe_cycle(&group))
            .collect()
    }

    fn describe_cycle(&self, group: &BTreeSet<String>) -> String {
        let start = group.first().cloned().unwrap_or_default();
        // Shortest way back to `start` inside the group.
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = VecDeque::from([start.clone()]);
        let mut last = None;
        'search: while let Some(node) = queue.pop_front() {
            for next in self.edges.get(&node).into_iter().flat_map(|e| e.keys()) {
                if !group.contains(next) {
                    continue;
                }
                if *next == start {
                    last = Some(node.clone());
                    break 'search;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next.clone(), node.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut path = vec![start.clone()];
        let mut node = last.unwrap_or_else(|| start.clone());
        while node != start {
            path.push(node.clone());
            node = came_from[&node].clone();
        }
        path.push(start.clone());
        let inner = path.len() - 1;
        path[1..inner].reverse();
        let mut out = format!("{}: {start}", self.root.display());
        for pair in path.windows(2) {
            let site = &self.edges[&pair[0]][&pair[1]];
            out.push_str(&format!(" -> {} ({site})", pair[1]));
        }
        if group.len() > path.len() - 1 {
            let names: Vec<&str> = group.iter().map(String::as_str).collect();
            out.push_str(&format!("; all in the cycle: {}", names.join(", ")));
        }
        out
    }
}

impl fmt::Display for CrateGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.root.display())?;
        for (from, to) in &self.edges {
            let names: Vec<&str> = to.keys().map(String::as_str).collect();
            writeln!(f, "  {from} -> {}", names.join(", "))?;
        }
        Ok(())
    }
}

/// Tarjan's algorithm, iteratively: the strongly connected groups of nodes.
fn strongly_connected(graph: &CrateGraph) -> Vec<BTreeSet<String>> {
    let mut nodes: BTreeSet<&str> = graph.modules.iter().map(String::as_str).collect();
    for (from, to) in &graph.edges {
        nodes.insert(from);
        nodes.extend(to.keys().map(String::as_str));
    }
    let successors = |n: &str| -> Vec<&str> {
        graph
            .edges
            .get(n)
            .map(|e| e.keys().map(String::as_str).collect())
            .unwrap_or_default()
    };
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut low: BTreeMap<&str, usize> = BTreeMap::new();
    let mut on_stack: BTreeSet<&str> = BTreeSet::new();
    let mut stack: Vec<&str> = Vec::new();
    let mut groups = Vec::new();
    for &start in &nodes {
        if index.contains_key(start) {
            continue;
        }
        // (node, its successors, the next one to visit)
        let mut work: Vec<(&str, Vec<&str>, usize)> = vec![(start, successors(start), 0)];
        index.insert(start, index.len());
        low.insert(start, index[start]);
        stack.push(start);
        on_stack.insert(start);
        while let Some((node, next, pos)) = work.last_mut() {
            let node = *node;
            if let Some(&succ) = next.get(*pos) {
                *pos += 1;
                if !index.contains_key(succ) {
                    index.insert(succ, index.len());
                    low.insert(succ, index[succ]);
                    stack.push(succ);
                    on_stack.insert(succ);
                    work.push((succ, successors(succ), 0));
                } else if on_stack.contains(succ) {
                    let l = low[node].min(index[succ]);
                    low.insert(node, l);
                }
                continue;
            }
            work.pop();
            if let Some((parent, _, _)) = work.last() {
                let l = low[*parent].min(low[node]);
                low.insert(*parent, l);
            }
            if low[node] == index[node] {
                let mut group = BTreeSet::new();
                while let Some(member) = stack.pop() {
                    on_stack.remove(member);
                    group.insert(member.to_owned());
                    if member == node {
                        break;
                    }
                }
                groups.push(group);
            }
        }
    }
    groups
}

/// The crate map in a crate root's `//!` docs: the modules named by its list items that
/// start with a module name in backticks (``//! - `server`: the MQTT listener``), in the
/// order listed, top (imports the most) to bottom. Empty when there is no map.
pub fn documented_order(root_source: &str) -> Vec<String> {
    root_source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("//!"))
        .filter_map(|l| l.trim_start().strip_prefix("- `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// Reads a file; None when it does not exist.
pub type Read<'a> = &'a dyn Fn(&Path) -> Option<String>;

/// The graph of the crate whose root file is `root`.
pub fn crate_graph(root: &Path, read: Read<'_>) -> Result<CrateGraph, String> {
    let source = read(root).ok_or_else(|| format!("cannot read {}", root.display()))?;
    let toks = non_test_tokens(&source);
    let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut graph = CrateGraph {
        root: root.to_path_buf(),
        ..CrateGraph::default()
    };
    let decls = module_declarations(&toks, root)?;
    let modules: BTreeSet<String> = decls.iter().map(|d| d.name.clone()).collect();
    let aliases = root_aliases(&toks, &modules);
    let resolver = Resolver {
        modules: &modules,
        aliases: &aliases,
    };
    graph.modules = modules.clone();
    // What the root itself uses: relative paths (`broker::Broker`) and `crate::` ones.
    let root_toks = outside_inline_modules(&toks, &decls);
    for (i, t) in root_toks.iter().enumerate() {
        let Some(name) = t.ident() else { continue };
        let starts_path = !after_path_sep(&root_toks, i);
        if starts_path && modules.contains(name) && is_path_sep(&root_toks, i + 1) {
            graph.add(ROOT, name, site(root, t));
        }
    }
    let mut refs = Vec::new();
    collect_references(&root_toks, 0, &mut refs)?;
    for (name, line) in refs {
        if let Some(target) = resolver.target(&name) {
            graph.add(
                ROOT,
                &target,
                Site {
                    file: root.to_path_buf(),
                    line,
                },
            );
        }
    }
    for decl in &decls {
        let mut files = Vec::new();
        match &decl.inline {
            Some(body) => files.push((root.to_path_buf(), body.clone(), 1)),
            None => module_files(&dir, &decl.name, 1, read, &mut files)?,
        }
        for (file, toks, depth) in files {
            let mut refs = Vec::new();
            collect_references(&toks, depth, &mut refs)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for (name, line) in refs {
                if let Some(target) = resolver.target(&name) {
                    graph.add(
                        &decl.name,
                        &target,
                        Site {
                            file: file.clone(),
                            line,
                        },
                    );
                }
            }
        }
    }
    Ok(graph)
}

fn site(file: &Path, t: &Token) -> Site {
    Site {
        file: file.to_path_buf(),
        line: t.line,
    }
}

/// Whether the token at `i` follows a `::` (so it does not start a path).
fn after_path_sep(toks: &[Token], i: usize) -> bool {
    i >= 2 && is_path_sep(toks, i - 2)
}

fn is_path_sep(toks: &[Token], i: usize) -> bool {
    toks.get(i).is_some_and(|t| t.is_punct(':')) && toks.get(i + 1).is_some_and(|t| t.is_punct(':'))
}

/// How names at the crate root resolve.
struct Resolver<'a> {
    modules: &'a BTreeSet<String>,
    /// Names the root imports: from a module of the crate (Some), or from elsewhere.
    aliases: &'a BTreeMap<String, Option<String>>,
}

impl Resolver<'_> {
    /// The node a root-level name belongs to: its module, the root for an item defined
    /// there, None for what the root imports from other crates.
    fn target(&self, name: &str) -> Option<String> {
        if self.modules.contains(name) {
            return Some(name.to_owned());
        }
        match self.aliases.get(name) {
            Some(module) => module.clone(),
            None => Some(ROOT.to_owned()),
        }
    }
}

/// A `mod` declared in the crate root.
struct ModDecl {
    name: String,
    /// The body of an inline `mod name { … }`.
    inline: Option<Vec<Token>>,
    /// Where the body's tokens are in the root's (inline modules only).
    span: Option<(usize, usize)>,
}

fn module_declarations(toks: &[Token], file: &Path) -> Result<Vec<ModDecl>, String> {
    let mut decls = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if path_attribute(toks, i) {
            return Err(format!(
                "{}:{}: #[path] on a module is not supported by the layering check",
                file.display(),
                toks[i].line
            ));
        }
        let is_mod = toks[i].is_ident("mod") && !after_path_sep(toks, i);
        let (Some(name), true) = (toks.get(i + 1).and_then(Token::ident), is_mod) else {
            i += 1;
            continue;
        };
        match toks.get(i + 2) {
            Some(t) if t.is_punct(';') => {
                decls.push(ModDecl {
                    name: name.to_owned(),
                    inline: None,
                    span: None,
                });
                i += 3;
            }
            Some(t) if t.is_punct('{') => {
                let end = skip_block(toks, i + 2);
                decls.push(ModDecl {
                    name: name.to_owned(),
                    inline: Some(toks[i + 3..end.saturating_sub(1)].to_vec()),
                    span: Some((i, end)),
                });
                i = end;
            }
            _ => i += 1,
        }
    }
    Ok(decls)
}

/// Whether `#[path` starts at `i`.
fn path_attribute(toks: &[Token], i: usize) -> bool {
    toks[i].is_punct('#')
        && toks.get(i + 1).is_some_and(|t| t.is_punct('['))
        && toks.get(i + 2).is_some_and(|t| t.is_ident("path"))
}

/// The root's tokens without the bodies of its inline modules.
fn outside_inline_modules(toks: &[Token], decls: &[ModDecl]) -> Vec<Token> {
    let spans: Vec<(usize, usize)> = decls.iter().filter_map(|d| d.span).collect();
    toks.iter()
        .enumerate()
        .filter(|(i, _)| !spans.iter().any(|(s, e)| (s..e).contains(&i)))
        .map(|(_, t)| t.clone())
        .collect()
}

/// The names the root's `use` declarations bring in, and where from.
fn root_aliases(toks: &[Token], modules: &BTreeSet<String>) -> BTreeMap<String, Option<String>> {
    let mut leaves = Vec::new();
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate() {
        if t.is_punct('{') {
            depth += 1;
        } else if t.is_punct('}') {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && t.is_ident("use") {
            use_tree(toks, i + 1, None, &mut leaves);
        }
    }
    leaves
        .into_iter()
        .map(|(name, first)| {
            let module = first.filter(|f| modules.contains(f));
            (name, module)
        })
        .collect()
}

/// Parses the use tree at `i` (`a::b::{c, d as e}`), adding (name brought in, first path
/// segment) per leaf; `crate` and `self` prefixes are skipped. Returns where it ends.
fn use_tree(
    toks: &[Token],
    mut i: usize,
    first: Option<String>,
    out: &mut Vec<(String, Option<String>)>,
) -> usize {
    let mut first = first;
    while is_path_sep(toks, i) {
        i += 2;
    }
    loop {
        let Some(t) = toks.get(i) else { return i };
        if t.is_punct('{') {
            i += 1;
            while let Some(t) = toks.get(i) {
                if t.is_punct('}') {
                    return i + 1;
                }
                if t.is_punct(',') {
                    i += 1;
                    continue;
                }
                let end = use_tree(toks, i, first.clone(), out);
                i = end.max(i + 1);
            }
            return i;
        }
        let Some(name) = t.ident() else { return i };
        if is_path_sep(toks, i + 1) {
            if first.is_none() && name != "crate" && name != "self" {
                first = Some(name.to_owned());
            }
            i += 3;
            continue;
        }
        let (alias, end) = if toks.get(i + 1).is_some_and(|t| t.is_ident("as")) {
            let alias = toks.get(i + 2).and_then(Token::ident).unwrap_or(name);
            (alias, i + 3)
        } else {
            (name, i + 1)
        };
        let first = first.or_else(|| Some(name.to_owned()));
        out.push((alias.to_owned(), first));
        return end;
    }
}

/// The files of top-level module `name` under `dir`, with their tokens and their depth
/// below the crate root (1 for the module's own file).
fn module_files(
    dir: &Path,
    name: &str,
    depth: usize,
    read: Read<'_>,
    out: &mut Vec<(PathBuf, Vec<Token>, usize)>,
) -> Result<(), String> {
    let flat = dir.join(format!("{name}.rs"));
    let nested = dir.join(name).join("mod.rs");
    let (file, source, children_dir) = match (read(&flat), read(&nested)) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "both {} and {} exist",
                flat.display(),
                nested.display()
            ))
        }
        (Some(s), None) => (flat, s, dir.join(name)),
        (None, Some(s)) => (nested, s, dir.join(name)),
        (None, None) => {
            return Err(format!(
                "module {name}: neither {} nor {} exists",
                flat.display(),
                nested.display()
            ))
        }
    };
    let toks = non_test_tokens(&source);
    let decls = module_declarations(&toks, &file)?;
    for decl in &decls {
        if decl.inline.is_none() {
            module_files(&children_dir, &decl.name, depth + 1, read, out)?;
        }
    }
    out.push((file, toks, depth));
    Ok(())
}

/// The crate-root names that `toks` (code `depth` modules below the root) refer to, with
/// their lines: after `crate::`, and after as many `super::` as lead to the root. Inline
/// `mod x { … }` blocks count one level deeper.
fn collect_references(
    toks: &[Token],
    depth: usize,
    out: &mut Vec<(String, usize)>,
) -> Result<(), String> {
    // Brace depths at which inline modules opened.
    let mut inline: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let after_sep = after_path_sep(toks, i);
        if t.is_punct('{') {
            let opens_mod = i >= 2 && toks[i - 2].is_ident("mod");
            braces += 1;
            if opens_mod {
                inline.push(braces);
            }
        } else if t.is_punct('}') {
            if inline.last() == Some(&braces) {
                inline.pop();
            }
            braces = braces.saturating_sub(1);
        } else if t.is_ident("crate")
            && !after_sep
            && !(i > 0 && toks[i - 1].is_punct('$'))
            && is_path_sep(toks, i + 1)
        {
            root_names(toks, i + 3, out)?;
        } else if t.is_ident("super") && !after_sep && is_path_sep(toks, i + 1) {
            let mut j = i;
            let mut supers = 0;
            while toks.get(j).is_some_and(|t| t.is_ident("super")) && is_path_sep(toks, j + 1) {
                supers += 1;
                j += 3;
            }
            if supers == depth + inline.len() {
                root_names(toks, j, out)?;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    Ok(())
}

/// The first path segments at `i`, just after a path reached the crate root: one name,
/// or each name of a `{a, b::c}` group.
fn root_names(toks: &[Token], i: usize, out: &mut Vec<(String, usize)>) -> Result<(), String> {
    let Some(t) = toks.get(i) else {
        return Ok(());
    };
    match &t.tok {
        Tok::Ident(name) if name != "self" => out.push((name.clone(), t.line)),
        Tok::Punct('*') => {
            return Err(format!(
                "line {}: a glob import of the crate root; name what is used",
                t.line
            ))
        }
        Tok::Punct('{') => {
            let end = skip_block(toks, i);
            let mut depth = 0usize;
            let mut expect_name = true;
            for t in &toks[i + 1..end.saturating_sub(1)] {
                match &t.tok {
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') => depth -= 1,
                    Tok::Punct(',') if depth == 0 => expect_name = true,
                    Tok::Ident(name) if expect_name && depth == 0 => {
                        if name != "self" {
                            out.push((name.clone(), t.line));
                        }
                        expect_name = false;
                    }
                    Tok::Punct('*') if expect_name && depth == 0 => {
                        return Err(format!(
                            "line {}: a glob import of the crate root; name what is used",
                            t.line
                        ))
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The members of the workspace whose root manifest is `manifest` (`members = [...]` of
/// `[workspace]`); a `dir/*` member stands for every directory under `dir`.
pub fn workspace_members(manifest: &str) -> Vec<String> {
    let mut in_workspace = false;
    let mut text = String::new();
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && !trimmed.starts_with("[[") && !text.contains('[') {
            in_workspace = trimmed == "[workspace]";
            continue;
        }
        if in_workspace && (trimmed.starts_with("members") || !text.is_empty()) {
            text.push_str(trimmed.split('#').next().unwrap_or(""));
            if text.contains(']') {
                break;
            }
        }
    }
    let Some(list) = text.split_once('[').map(|(_, rest)| rest) else {
        return Vec::new();
    };
    list.split(']')
        .next()
        .unwrap_or("")
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The crate root files of every workspace member under `workspace`: `src/lib.rs`,
/// `src/main.rs`, and the binaries in `src/bin/`.
pub fn workspace_crate_roots(workspace: &Path) -> std::io::Result<Vec<PathBuf>> {
    let manifest = std::fs::read_to_string(workspace.join("Cargo.toml"))?;
    let mut dirs = Vec::new();
    for member in workspace_members(&manifest) {
        match member.strip_suffix("/*") {
            Some(parent) => {
                for entry in std::fs::read_dir(workspace.join(parent))? {
                    let path = entry?.path();
                    if path.join("Cargo.toml").is_file() {
                        dirs.push(path);
                    }
                }
            }
            None => dirs.push(workspace.join(member)),
        }
    }
    let mut roots = Vec::new();
    for dir in dirs {
        let src = dir.join("src");
        for root in ["lib.rs", "main.rs"] {
            if src.join(root).is_file() {
                roots.push(src.join(root));
            }
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            let mut bins: Vec<PathBuf> = bins.filter_map(|e| Some(e.ok()?.path())).collect();
            bins.sort();
            for bin in bins {
                if bin.extension().is_some_and(|e| e == "rs") {
                    roots.push(bin);
                } else if bin.join("main.rs").is_file() {
                    roots.push(bin.join("main.rs"));
                }
            }
        }
    }
    Ok(roots)
}
