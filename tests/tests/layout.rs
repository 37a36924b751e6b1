//! The import graph of every crate of the workspace has no cycles: each
//! file-level module can be read and changed knowing only what it imports.
use std::path::{Path, PathBuf};

use carwash_tests::layout;

/// The crate roots of the workspace (a library and a binary in one
/// directory are two crates).
const ROOTS: &[&str] = &[
    "dataplane/src/lib.rs",
    "dataplane/src/main.rs",
    "dataplane/policy/src/lib.rs",
    "dataplane-ebpf/src/main.rs",
    "dataplane-ebpf/common/src/lib.rs",
    "tests/src/lib.rs",
    "tests/netlab/src/lib.rs",
    "xtask/src/main.rs",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn no_crate_has_an_import_cycle() {
    let mut report = Vec::new();
    for root in ROOTS {
        let file = workspace().join(root);
        let graph = layout::read_crate(&file).unwrap_or_else(|e| panic!("{root}: {e}"));
        assert!(
            graph.modules.len() > 1 || root.contains("common"),
            "{root}: no modules found"
        );
        for cycle in layout::cycles(&graph) {
            let files: Vec<String> = cycle.iter().map(|f| f.display().to_string()).collect();
            report.push(format!(
                "{root}: {} (all of: {})",
                layout::describe_cycle(&graph, &cycle),
                files.join(", ")
            ));
            for edge in layout::cycle_edges(&graph, &cycle) {
                report.push(format!("    {edge}"));
            }
        }
    }
    assert!(report.is_empty(), "import cycles:\n{}", report.join("\n"));
}
