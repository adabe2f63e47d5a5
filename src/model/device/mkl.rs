//! Intel MKL, loaded at run time like the CUDA toolkit (never linked): the bf16 matmul with f32
//! accumulation that `--dtype bf16` on the CPU runs (`cblas_gemm_bf16bf16f32`: AMX tiles or
//! AVX512-BF16 where the CPU has them, an emulation elsewhere).
//!
//! MKL runs sequentially: the engine owns the threads and splits a matmul's rows over them.
//! It is looked for in `LLM_ATTR_MKL` (a directory holding `libmkl_rt.so.3`, or the file), then
//! in the cache `scripts/fetch-mkl.sh` fills (`~/.cache/llm-attr/mkl/mkl-*.data/data/lib`), then
//! by the system loader's search path.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// MKL's runtime-dispatch library, which loads the rest from its own directory.
const LIBRARY: &str = "libmkl_rt.so.3";
/// `MKL_Set_Threading_Layer`'s value for the sequential layer.
const THREADING_SEQUENTIAL: c_int = 1;
/// `MKL_Set_Interface_Layer`'s value for 32-bit integers (LP64).
const INTERFACE_LP64: c_int = 0;
/// CBLAS enums.
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type GemmBf16 = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const u16,
    c_int,
    *const u16,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetLayer = unsafe extern "C" fn(c_int) -> c_int;

/// The loaded library and its bf16 matmul.
pub(crate) struct Mkl {
    gemm: GemmBf16,
    /// Where it was loaded from.
    pub path: String,
    _lib: libloading::Library,
}

/// One row-major matmul `c = a @ op(b)`: `a` is `[m, k]` bf16 bits, `b` is `[k, n]`, or `[n, k]`
/// read transposed when `b_transposed`, `c` is `[m, n]` f32.
pub(crate) struct Gemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: &'a [u16],
    pub b: &'a [u16],
    pub b_transposed: bool,
    pub c: &'a mut [f32],
}

impl Mkl {
    /// Runs `g` on the calling thread.
    pub(crate) fn gemm(&self, g: Gemm) -> std::result::Result<(), String> {
        let (m, n, k) = (g.m, g.n, g.k);
        let fits = |x: usize| c_int::try_from(x).is_ok();
        if ![m, n, k, m * k, k * n, m * n].into_iter().all(fits) {
            return Err(format!(
                "a {m}x{k} by {k}x{n} matmul is too large for MKL's 32-bit sizes"
            ));
        }
        if g.a.len() < m * k || g.b.len() < k * n || g.c.len() < m * n {
            return Err(format!("buffers too short for a {m}x{k} by {k}x{n} matmul"));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (tb, ldb) = if g.b_transposed { (TRANS, k) } else { (NO_TRANS, n) };
        let i = |x: usize| x as c_int;
        // SAFETY: the sizes fit MKL's ints and the buffers hold `m*k`, `k*n` and `m*n` values
        // laid out row-major with the leading dimensions given (checked above).
        unsafe {
            (self.gemm)(
                ROW_MAJOR,
                NO_TRANS,
                tb,
                i(m),
                i(n),
                i(k),
                1.0,
                g.a.as_ptr(),
                i(k),
                g.b.as_ptr(),
                i(ldb),
                0.0,
                g.c.as_mut_ptr(),
                i(n),
            )
        };
        Ok(())
    }
}

/// MKL, loaded once per process; the error says where it was looked for.
pub(crate) fn get() -> std::result::Result<&'static Mkl, String> {
    static MKL: OnceLock<std::result::Result<Mkl, String>> = OnceLock::new();
    MKL.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> std::result::Result<Mkl, String> {
    load_from(&candidates())
}

/// The first of `candidates` that opens.
fn load_from(candidates: &[PathBuf]) -> std::result::Result<Mkl, String> {
    let mut tried = Vec::new();
    for path in candidates {
        match open(path) {
            Ok(mkl) => return Ok(mkl),
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    Err(format!(
        "Intel MKL ({LIBRARY}) was not found; looked in {}. Run scripts/fetch-mkl.sh (it puts MKL's \
         PyPI wheel in ~/.cache/llm-attr/mkl), or set LLM_ATTR_MKL to a directory holding {LIBRARY}",
        tried.join("; ")
    ))
}

/// Where to look, in order: `LLM_ATTR_MKL`, the cache, then the bare name for the system loader.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("LLM_ATTR_MKL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        out.push(if p.is_dir() { p.join(LIBRARY) } else { p });
    }
    out.extend(cached(&cache_dir().join("mkl")));
    out.push(PathBuf::from(LIBRARY));
    out
}

/// llm-attr's cache: `LLM_ATTR_CACHE`, else `$XDG_CACHE_HOME/llm-attr`, else `~/.cache/llm-attr`.
fn cache_dir() -> PathBuf {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("LLM_ATTR_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("llm-attr")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/llm-attr")))
        .unwrap_or_else(|| PathBuf::from(".cache/llm-attr"))
}

/// `mkl-*.data/data/lib/libmkl_rt.so.3` under `dir` (what fetch-mkl.sh unpacks), newest first.
fn cached(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("data/lib").join(LIBRARY)))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.reverse();
    if found.is_empty() {
        found.push(dir.join("mkl-<version>.data/data/lib").join(LIBRARY));
    }
    found
}

/// Opens the library at `path`, sets it sequential (LP64) and finds the bf16 matmul.
fn open(path: &Path) -> std::result::Result<Mkl, String> {
    // SAFETY: loading MKL runs its initialisers, which have no preconditions on this process.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| first_line(&e.to_string()))?;
    // SAFETY: the symbols have these C signatures in every MKL since 2020 (mkl_service.h and
    // mkl_cblas.h), and are called before any other MKL function, as MKL asks.
    unsafe {
        let threading: libloading::Symbol<SetLayer> =
            lib.get(b"MKL_Set_Threading_Layer\0").map_err(|e| e.to_string())?;
        let interface: libloading::Symbol<SetLayer> =
            lib.get(b"MKL_Set_Interface_Layer\0").map_err(|e| e.to_string())?;
        interface(INTERFACE_LP64);
        threading(THREADING_SEQUENTIAL);
        let gemm: libloading::Symbol<GemmBf16> =
            lib.get(b"cblas_gemm_bf16bf16f32\0").map_err(|e| e.to_string())?;
        let gemm = *gemm;
        Ok(Mkl {
            gemm,
            path: path.display().to_string(),
            _lib: lib,
        })
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where MKL is not, the error names every place looked in and how to get it.
    #[test]
    fn missing_mkl_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let cached = cached(&dir.path().join("mkl"));
        let e = load_from(&[dir.path().join(LIBRARY), cached[0].clone()])
            .err()
            .unwrap();
        assert!(e.contains(&dir.path().join(LIBRARY).display().to_string()), "{e}");
        assert!(e.contains("mkl-<version>.data/data/lib"), "{e}");
        assert!(e.contains("scripts/fetch-mkl.sh"), "{e}");
        assert!(e.contains("LLM_ATTR_MKL"), "{e}");
        // A file that is not a library is tried and named too.
        let bogus = dir.path().join("libmkl_rt.so.3");
        std::fs::write(&bogus, b"not a library").unwrap();
        assert!(load_from(&[bogus]).err().unwrap().contains("libmkl_rt.so.3"));
    }
}
