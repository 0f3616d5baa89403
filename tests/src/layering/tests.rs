//! The layering check on small synthetic crates, held in memory.

use std::collections::HashMap;

use super::*;

/// The graph of a crate made of `files` (path, source), rooted at `src/lib.rs`.
fn graph(files: &[(&str, &str)]) -> Result<CrateGraph, String> {
    let files: HashMap<PathBuf, String> = files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect();
    let read = move |p: &Path| files.get(p).cloned();
    crate_graph(Path::new("src/lib.rs"), &read)
}

fn edges(g: &CrateGraph) -> Vec<String> {
    g.edges
        .iter()
        .flat_map(|(from, to)| to.keys().map(move |t| format!("{from}->{t}")))
        .collect()
}

#[test]
fn a_cycle_is_found_and_spelled_out_with_where_each_import_is() {
    let g = graph(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\nmod c;\n"),
        ("src/a.rs", "use crate::b::Thing;\n"),
        ("src/b.rs", "use crate::c::X;\n"),
        ("src/c.rs", "pub fn f() {\n    crate::a::g();\n}\n"),
    ])
    .unwrap();
    assert_eq!(edges(&g), ["a->b", "b->c", "c->a"]);
    assert_eq!(
        g.cycles(),
        ["src/lib.rs: a -> b (src/a.rs:1) -> c (src/b.rs:1) -> a (src/c.rs:2)"]
    );
}

#[test]
fn an_acyclic_crate_passes_and_test_code_comments_and_strings_do_not_count() {
    let g = graph(&[
        ("src/lib.rs", "mod a;\nmod b;\n#[cfg(test)]\nmod tests;\n"),
        (
            "src/a.rs",
            "use crate::b;\n// crate::a is mentioned in a comment\n/* and crate::a /* nested */ here */\n",
        ),
        (
            "src/b.rs",
            r##"
/// Docs name [`crate::a::Thing`].
pub fn f() -> &'static str {
    let _c = 'x';
    let _q = '\'';
    let _raw = r#"crate::a::x"#;
    "crate::a::y"
}

#[cfg(test)]
mod tests {
    use crate::a::Thing;
}

#[cfg(test)]
use crate::a::Other;

#[cfg(not(test))]
pub fn g() {}
"##,
        ),
    ])
    .unwrap();
    assert_eq!(edges(&g), ["a->b"]);
    assert!(g.cycles().is_empty());
}

#[test]
fn a_cfg_test_item_is_skipped_to_its_end_and_no_further() {
    let g = graph(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        (
            "src/a.rs",
            "#[cfg(test)]\n#[allow(dead_code)]\nfn helper(x: [u8; 2]) { crate::b::f(); }\nfn real() { crate::c::f(); }\n",
        ),
        ("src/b.rs", ""),
        ("src/c.rs", ""),
    ])
    .unwrap();
    assert_eq!(edges(&g), ["a->c"]);
}

#[test]
fn groups_pub_use_and_paths_in_expressions_are_imports() {
    let g = graph(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\nmod e;\n"),
        (
            "src/a.rs",
            "use crate::{\n    b,\n    c::{self, Deep},\n};\npub use crate::d::D;\nstruct S {\n    e: crate::e::E,\n}\n",
        ),
        ("src/b.rs", ""),
        ("src/c.rs", ""),
        ("src/d.rs", ""),
        ("src/e.rs", ""),
    ])
    .unwrap();
    assert_eq!(edges(&g), ["a->b", "a->c", "a->d", "a->e"]);
}

#[test]
fn submodule_files_in_both_layouts_count_for_their_top_level_module() {
    let g = graph(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/a.rs", "mod inner;\n"),
        ("src/a/inner.rs", "mod deeper;\nuse super::super::b::X;\n"),
        ("src/a/inner/deeper.rs", "use crate::c::Y;\n"),
        ("src/b/mod.rs", "mod part;\nuse super::c;\n"),
        ("src/b/part.rs", "use super::X;\n"),
        ("src/c.rs", ""),
    ])
    .unwrap();
    assert_eq!(edges(&g), ["a->b", "a->c", "b->c"]);
    let both = graph(&[
        ("src/lib.rs", "mod a;\n"),
        ("src/a.rs", ""),
        ("src/a/mod.rs", ""),
    ]);
    assert!(both.unwrap_err().contains("both"));
}

#[test]
fn names_the_root_re_exports_and_items_the_root_defines_are_edges() {
    let g = graph(&[
        (
            "src/lib.rs",
            "mod a;\nmod b;\nmod c;\npub use b::Thing;\nuse std::sync::Arc;\npub fn helper() { c::f() }\n",
        ),
        ("src/a.rs", "use crate::Thing;\nuse crate::Arc;\n"),
        ("src/b.rs", ""),
        ("src/c.rs", "pub fn g() { crate::helper() }\n"),
    ])
    .unwrap();
    assert!(g.has_edge("a", "b"), "{g}");
    assert!(!g.has_edge("a", ROOT), "std's Arc is no edge: {g}");
    assert!(g.has_edge(ROOT, "c") && g.has_edge("c", ROOT), "{g}");
    assert_eq!(
        g.cycles(),
        ["src/lib.rs: (crate root) -> c (src/lib.rs:6) -> (crate root) (src/c.rs:1)"]
    );
}

#[test]
fn the_crate_map_must_list_every_module_above_what_it_imports() {
    let lib = "//! A crate.\n//!\n//! - `top`: uses the others\n//! - `middle`: uses `bottom`\n//! - `bottom`: a leaf\n//!\n//! Not a map: - `nothing`\n\nmod bottom;\nmod middle;\nmod top;\n";
    let files = [
        ("src/lib.rs", lib),
        (
            "src/top.rs",
            "use crate::middle::M;\nuse crate::bottom::B;\n",
        ),
        ("src/middle.rs", "use crate::bottom::B;\n"),
        ("src/bottom.rs", ""),
    ];
    let order = documented_order(lib);
    assert_eq!(order, ["top", "middle", "bottom"]);
    assert!(graph(&files).unwrap().check_order(&order).is_empty());
    let upward = [
        ("src/lib.rs", lib),
        ("src/top.rs", ""),
        ("src/middle.rs", "use crate::top::T;\n"),
        ("src/bottom.rs", ""),
    ];
    assert_eq!(
        graph(&upward).unwrap().check_order(&order),
        ["src/lib.rs: middle imports top (src/middle.rs:1), which the crate map lists above it"]
    );
    let unlisted = graph(&files)
        .unwrap()
        .check_order(&["top".to_owned(), "bottom".to_owned()]);
    assert_eq!(
        unlisted,
        ["src/lib.rs: module middle is not in the crate map"]
    );
}

#[test]
fn what_cannot_be_resolved_is_refused_not_guessed() {
    let path = graph(&[
        ("src/lib.rs", "#[path = \"elsewhere.rs\"]\nmod a;\n"),
        ("src/a.rs", ""),
    ]);
    assert!(path.unwrap_err().contains("#[path]"));
    let glob = graph(&[("src/lib.rs", "mod a;\n"), ("src/a.rs", "use crate::*;\n")]);
    assert!(glob.unwrap_err().contains("glob"));
    let missing = graph(&[("src/lib.rs", "mod a;\n")]);
    assert!(missing.unwrap_err().contains("neither"));
}

#[test]
fn workspace_members_are_read_from_the_root_manifest() {
    let manifest = r#"
[workspace]
resolver = "2"
members = [
    "seam", # the ids and traits
    "broker",
    "crates/*",
]

[workspace.package]
version = "0.1.0"
"#;
    assert_eq!(workspace_members(manifest), ["seam", "broker", "crates/*"]);
    assert_eq!(
        workspace_members("[workspace]\nmembers = [\"a\", \"b\"]\n"),
        ["a", "b"]
    );
    assert!(workspace_members("[package]\nname = \"x\"\n").is_empty());
}
