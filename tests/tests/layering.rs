//! Layering: no crate of the workspace has an import cycle among the top-level modules of
//! its `src/` (see `skein_tests::layering` for what counts as an import), and each crate's
//! map (its modules in layer order, in the `//!` docs of its root) lists every module
//! above the ones it imports. Crates are found from the workspace's manifest, so a new
//! crate is checked as soon as it is a member.

use std::path::Path;

use skein_tests::layering::{crate_graph, documented_order, workspace_crate_roots};

#[test]
fn no_crate_has_an_import_cycle_among_its_top_level_modules() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace");
    let roots = workspace_crate_roots(workspace).expect("workspace manifest");
    for expected in ["seam/src/lib.rs", "broker/src/lib.rs", "storage/src/lib.rs"] {
        assert!(
            roots.contains(&workspace.join(expected)),
            "{expected} not found among {roots:?}"
        );
    }
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut problems = Vec::new();
    for root in &roots {
        let graph = match crate_graph(root, &read) {
            Ok(graph) => graph,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        eprint!("{graph}");
        // A crate with several modules always has some imports between them: none seen
        // would mean the check itself broke.
        if graph.modules.len() > 2 {
            assert!(!graph.edges.is_empty(), "no imports seen in {graph}");
        }
        problems.extend(graph.cycles());
        if !graph.modules.is_empty() {
            let source = read(root).unwrap_or_default();
            problems.extend(graph.check_order(&documented_order(&source)));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles, or crate maps that disagree with the imports:\n{}",
        problems.join("\n")
    );
}
