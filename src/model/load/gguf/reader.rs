//! An open GGUF file: the header walked with every length checked against the file size
//! (candle's reader trusts the lengths it reads: a garbage string length becomes a huge
//! allocation), every tensor's bytes checked to lie inside the file, then typed metadata and
//! tensors (dequantized) on request.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// An open GGUF file whose header has been checked.
pub struct Gguf {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
}

impl Gguf {
    /// Opens `path` and checks its GGUF header; a missing, unreadable or invalid file is an
    /// [`Error::Model`] naming it.
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |m: String| Error::Model(format!("{}: {m}", path.display()));
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let meta = file.metadata().map_err(|e| fail(format!("cannot read: {e}")))?;
        if meta.is_dir() {
            return Err(fail("is a directory, not a GGUF file".into()));
        }
        let len = meta.len();
        let mut reader = BufReader::new(file);
        Scan::new(&mut reader, len)
            .header()
            .map_err(|m| fail(format!("not a valid GGUF file: {m}")))?;
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let content = Content::read(&mut reader).map_err(|e| fail(format!("not a valid GGUF file: {e}")))?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(fail(format!(
                    "tensor {name}: {elems} elements is not a multiple of the block size {block}"
                )));
            }
            let end = (elems / block)
                .checked_mul(info.ggml_dtype.type_size())
                .and_then(|n| (n as u64).checked_add(info.offset))
                .and_then(|n| n.checked_add(content.tensor_data_offset));
            match end {
                Some(end) if end <= len => {}
                _ => {
                    return Err(fail(format!(
                        "the file is truncated: tensor {name} lies beyond its {len} bytes"
                    )))
                }
            }
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            reader,
            content,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An `Error::Model` naming the file.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Model(format!("{}: {message}", self.path.display()))
    }

    /// Every metadata key and its value.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The metadata value at `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn need(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.error(format!("metadata key `{key}` is missing")))
    }

    /// A non-negative integer of any integer type.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.need(key)?;
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.error(format!("metadata `{key}` is not a non-negative integer")))
    }

    /// A number of any float or integer type.
    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.need(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            _ => self
                .usize(key)
                .map(|n| n as f64)
                .map_err(|_| self.error(format!("metadata `{key}` is not a number"))),
        }
    }

    /// A string.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.need(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.error(format!("metadata `{key}` is not a string"))),
        }
    }

    /// An array.
    pub fn array(&self, key: &str) -> Result<&[Value]> {
        match self.need(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(self.error(format!("metadata `{key}` is not an array"))),
        }
    }

    /// Shape of a stored tensor (candle order: outermost first).
    pub(crate) fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    pub(crate) fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor as stored (possibly quantized) on `device`; `shape` is checked when given.
    pub(crate) fn qtensor(
        &mut self,
        name: &str,
        shape: Option<&[usize]>,
        device: &Device,
    ) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.error(format!("tensor `{name}` is missing")))?;
        if let Some(shape) = shape {
            if info.shape.dims() != shape {
                return Err(self.error(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                )));
            }
        }
        let t = info
            .read(&mut self.reader, self.content.tensor_data_offset, device)
            .map_err(|e| self.error(format!("cannot read tensor `{name}`: {e}")))?;
        Ok(t)
    }

    /// A tensor dequantized to f32 on `device`.
    pub fn tensor(&mut self, name: &str, shape: Option<&[usize]>, device: &Device) -> Result<Tensor> {
        let q = self.qtensor(name, shape, device)?;
        q.dequantize(device)
            .map_err(|e| self.error(format!("cannot dequantize tensor `{name}`: {e}")))
    }

    /// A small tensor's values, read on the host (they configure the model, they are not
    /// weights).
    pub(crate) fn f32_values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor(name, Some(shape), &Device::Cpu)?;
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }
}

/// The tokenizer from `tokenizer.ggml.*`: byte-level BPE (`gpt2`) or SentencePiece (`llama`),
/// Walks a GGUF header checking every length against the file size, without allocating.
struct Scan<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    wide: bool,
}

impl<'a, R: Read + Seek> Scan<'a, R> {
    fn new(r: &'a mut R, len: u64) -> Self {
        Scan {
            r,
            pos: 0,
            len,
            wide: true,
        }
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("the file ends early (at byte {})", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count or length: u32 in GGUF v1, u64 later.
    fn count(&mut self) -> std::result::Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn skip(&mut self, n: u64) -> std::result::Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "a length of {n} bytes at byte {} runs past the end of the file",
                self.pos
            ));
        }
        let n = i64::try_from(n).map_err(|_| "length out of range".to_string())?;
        self.r.seek_relative(n).map_err(|e| format!("cannot read: {e}"))?;
        self.pos += n as u64;
        Ok(())
    }

    fn string(&mut self) -> std::result::Result<(), String> {
        let n = self.count()?;
        self.skip(n)
    }

    fn header(&mut self) -> std::result::Result<(), String> {
        let magic = self.bytes::<4>()?;
        if &magic != b"GGUF" {
            return Err(format!("bad magic {magic:02x?}"));
        }
        let version = self.u32()?;
        if !(1..=3).contains(&version) {
            return Err(format!("unsupported version {version}"));
        }
        self.wide = version > 1;
        let tensors = self.count()?;
        let kvs = self.count()?;
        if kvs > self.left() / 9 || tensors > self.left() / 24 {
            return Err(format!(
                "{tensors} tensors and {kvs} metadata entries cannot fit in the file"
            ));
        }
        for _ in 0..kvs {
            self.string()?;
            let ty = self.u32()?;
            self.value(ty, 0)?;
        }
        for _ in 0..tensors {
            self.string()?;
            let dims = self.u32()?;
            if !(1..=4).contains(&dims) {
                return Err(format!("a tensor has {dims} dimensions (1 to 4 allowed)"));
            }
            let mut elems: u64 = 1;
            for _ in 0..dims {
                let d = self.count()?;
                elems = elems
                    .checked_mul(d)
                    .filter(|&e| e <= self.len.saturating_mul(4))
                    .ok_or("a tensor has more elements than the file can hold")?;
            }
            let _dtype = self.u32()?;
            let _offset = self.u64()?;
        }
        Ok(())
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<(), String> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string(),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deep".into());
                }
                let elem = self.u32()?;
                let n = self.count()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 if !self.wide => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => return Err(format!("unknown metadata type {elem}")),
                };
                if n > self.left() / min {
                    return Err(format!("an array of {n} values cannot fit in the file"));
                }
                if matches!(elem, 8 | 9) {
                    for _ in 0..n {
                        self.value(elem, depth + 1)?;
                    }
                    return Ok(());
                }
                return self.skip(n * min);
            }
            _ => return Err(format!("unknown metadata type {ty}")),
        };
        self.skip(size)
    }
}
