//! Embeds every file under `static/` (the web page) into the binary.

use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=static");
    // The CUDA build records which compute capability candle's kernels were compiled for, so a
    // GPU too old for them is refused with a clear message (src/model/device.rs).
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
            println!("cargo:rustc-env=LLM_ATTR_CUDA_COMPUTE_CAP={cap}");
        }
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dir = root.join("static");
    let mut files = Vec::new();
    walk(&dir, &mut files);
    let mut code =
        String::from("/// (path under static/, contents)\npub static FILES: &[(&str, &[u8])] = &[\n");
    for f in files {
        let rel = f.strip_prefix(&dir).expect("under static/");
        let rel = rel.to_string_lossy().replace('\\', "/");
        code.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            f.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("static_files.rs");
    std::fs::write(out, code).expect("write static_files.rs");
}
