//! Lists templates/ into the table of built-in templates (`render::BUILTIN`), so a template is
//! built in by being there: nothing to register by hand.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    // A directory here means: rerun when anything under it is added, removed or changed.
    println!("cargo::rerun-if-changed=templates");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut table = String::from("&[\n");
    for file in &files {
        let name = file
            .strip_prefix(&root)
            .expect("under templates/")
            .components()
            .map(|c| c.as_os_str().to_str().expect("template paths are UTF-8"))
            .collect::<Vec<_>>()
            .join("/");
        let path = file.to_str().expect("template paths are UTF-8");
        writeln!(table, "    ({name:?}, include_str!({path:?})),").unwrap();
    }
    table.push_str("]\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("builtin_templates.rs"), table).expect("OUT_DIR is writable");
}

/// Every file under `dir`, leaving out hidden ones (an editor's `.x.swp`, `.DS_Store`).
fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("a readable directory entry");
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
