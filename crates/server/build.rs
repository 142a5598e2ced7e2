//! Embeds the web dashboard (`dashboard/` at the repository root) in the binary: writes
//! `$OUT_DIR/dashboard_assets.rs`, a table of `(path, include_bytes!(file))` for every file under it, sorted by path.
//! Adding, changing or removing a file there rebuilds the table; no Node toolchain is involved.

use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Editor leftovers and hidden files are not part of the dashboard.
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") {
            continue;
        }
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../dashboard");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let root = root.canonicalize().unwrap_or(root);
    let mut table = String::from(
        "/// Every file of `dashboard/`: (path relative to it, contents).\npub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let file = file.canonicalize().unwrap_or(file.clone());
        let rel = file
            .strip_prefix(&root)
            .expect("a file under dashboard/")
            .to_string_lossy()
            .replace('\\', "/");
        table.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("dashboard_assets.rs");
    std::fs::write(out, table).expect("writing the dashboard table");
}
