//! safetensors ⇄ [`Params`]: loading a Hugging Face checkpoint (single file or shards) into
//! trainable f32 variables, validating names and shapes, and saving them back so that
//! transformers can read the result.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor, Var};

use crate::data::one_line;

/// The trainable weights of a model, in a fixed order (the architecture's parameter list).
pub struct Params {
    names: Vec<String>,
    vars: Vec<Var>,
    index: HashMap<String, usize>,
}

impl Params {
    pub fn new(entries: Vec<(String, Var)>) -> Self {
        let mut names = Vec::with_capacity(entries.len());
        let mut vars = Vec::with_capacity(entries.len());
        let mut index = HashMap::new();
        for (i, (n, v)) in entries.into_iter().enumerate() {
            index.insert(n.clone(), i);
            names.push(n);
            vars.push(v);
        }
        Params { names, vars, index }
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// The gradient of every weight in `store`, in weight order (None where a weight got none).
    pub fn grads(&self, store: &candle_core::backprop::GradStore) -> Vec<Option<Tensor>> {
        self.vars()
            .iter()
            .map(|v| store.get(v.as_tensor()).cloned())
            .collect()
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }
    /// The position of weight `name` in weight order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.index.get(name).map(|&i| &self.vars[i])
    }
    pub fn len(&self) -> usize {
        self.vars.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }
}

/// The safetensors files of a model folder: the shards listed in `model.safetensors.index.json`,
/// or `model.safetensors`, or every `*.safetensors`. Pickle checkpoints are refused.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: missing object field \"weight_map\"", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .map(|f| {
                f.as_str().map(str::to_string).ok_or_else(|| {
                    anyhow!(
                        "{}: \"weight_map\" values must be file names",
                        index.display()
                    )
                })
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        let mut paths = Vec::with_capacity(files.len());
        for f in &files {
            // a shard is a file of the folder: no path ("/dev/zero", "../x.safetensors")
            let mut parts = Path::new(f).components();
            if !matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            ) {
                bail!(
                    "{}: \"weight_map\" names {f:?}, which is not a file name in the model folder",
                    index.display()
                );
            }
            let p = dir.join(f);
            if !p.exists() {
                bail!("{}: shard {f:?} is missing", index.display());
            }
            paths.push(regular_file(p)?);
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![regular_file(single)?]);
    }
    let mut found = Vec::new();
    let mut pickles = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list folder", dir.display()))?;
    for e in entries {
        let p = e
            .with_context(|| format!("{}: cannot list folder", dir.display()))?
            .path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("safetensors") => found.push(p),
            Some("bin" | "pt" | "pth" | "ckpt") => pickles.push(p),
            _ => {}
        }
    }
    found.sort();
    if !found.is_empty() {
        return found.into_iter().map(regular_file).collect();
    }
    if let Some(p) = pickles.first() {
        bail!(
            "{}: only a pickle checkpoint was found ({}). ldviz never unpickles (a pickle can run code). Convert it once with: python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{}').save_pretrained('{}', safe_serialization=True)\"",
            dir.display(),
            p.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            dir.display(),
            dir.display()
        );
    }
    bail!("{}: no *.safetensors weights found", dir.display())
}

/// `p` when it is a regular file (or a link to one): weights are read whole, so a device such as
/// /dev/zero must not stand in for one.
fn regular_file(p: PathBuf) -> Result<PathBuf> {
    let meta = std::fs::metadata(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: not a regular file (expected safetensors weights)",
            p.display()
        );
    }
    Ok(p)
}

/// Reads all tensors of the given safetensors files, converted to f32 on `device`.
pub fn read_tensors(files: &[PathBuf], device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    for f in files {
        let bytes =
            std::fs::read(f).with_context(|| format!("{}: cannot read weights", f.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow!(
                "{}: not a valid safetensors file ({}); is it truncated?",
                f.display(),
                one_line(&e.to_string())
            )
        })?;
        for (name, view) in st.tensors() {
            let t = candle_core::safetensors::Load::load(&view, device).map_err(|e| {
                anyhow!(
                    "{}: tensor {name:?}: {}",
                    f.display(),
                    one_line(&e.to_string())
                )
            })?;
            let t = t.to_dtype(DType::F32).map_err(|e| {
                anyhow!(
                    "{}: tensor {name:?}: {}",
                    f.display(),
                    one_line(&e.to_string())
                )
            })?;
            all.insert(name, t);
        }
    }
    Ok(all)
}

/// Buffers some checkpoints carry that are not weights.
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("attention.bias")
        || name.ends_with("attention.masked_bias")
}

/// Builds [`Params`] from loaded tensors, in the order of `shapes` (the architecture's),
/// checking every shape. GPT-2 checkpoints without the `transformer.` prefix are read as with it
/// ([`super::gpt2::with_prefix`]). Tensors the architecture does not use are reported as an
/// error unless they are known buffers or an LM head stored beside the embedding it is tied to.
pub fn params_from_tensors(
    tensors: HashMap<String, Tensor>,
    shapes: &[(String, Vec<usize>)],
    source: &str,
) -> Result<Params> {
    let mut tensors = super::gpt2::with_prefix(tensors);
    let mut entries = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let t = tensors
            .remove(name)
            .ok_or_else(|| anyhow!("{source}: weight {name:?} is missing"))?;
        if t.dims() != shape.as_slice() {
            bail!(
                "{source}: weight {name:?} has shape {:?}, config.json implies {:?}",
                t.dims(),
                shape
            );
        }
        let var = Var::from_tensor(&t).with_context(|| format!("{source}: weight {name:?}"))?;
        entries.push((name.clone(), var));
    }
    let mut unused: Vec<&String> = tensors
        .keys()
        .filter(|k| !is_buffer(k) && !super::net::is_tied_head_copy(k))
        .collect();
    unused.sort();
    if let Some(first) = unused.first() {
        bail!(
            "{source}: {} tensor(s) do not belong to this architecture, e.g. {first:?} (is config.json's model_type right?)",
            unused.len()
        );
    }
    Ok(Params::new(entries))
}

/// Saves the weights as one safetensors file with `{"format": "pt"}` metadata.
pub fn save(params: &Params, path: &Path) -> Result<()> {
    let mut data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, var) in params.names().iter().zip(params.vars()) {
        let t = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
        let v: Vec<f32> = t.to_vec1()?;
        let mut bytes = Vec::with_capacity(v.len() * 4);
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        data.insert(name.clone(), (var.dims().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, (shape, bytes))| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| anyhow!("tensor \"{n}\": {e}"))
        })
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| anyhow!("{}: cannot write safetensors: {e}", path.display()))
}
