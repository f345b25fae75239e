//! A Hugging Face checkpoint's weights into a model: each file memory-mapped (the `safetensors`
//! crate reads tensors straight from the mapping), each tensor converted to float32 once, put in
//! roux's layout through the one name table (`hf::names`) and adopted by the model.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

use crate::arith::graph::routed_expert;
use crate::hf::names;
use crate::recipe::{Checkpoint, ModelSpec};
use crate::run::model::expert_parallel::Share;
use crate::run::model::nf4::Nf4;
use crate::run::model::Model;

/// The model `spec` imported with `hf(…)`, its weights from the checkpoint; of each routed expert
/// stack only `share`'s experts are read (expert parallelism).
pub fn load(spec: &ModelSpec, device: Device, share: Option<Share>) -> Result<Model> {
    load_as(spec, device, share, None)
}

/// `load`; with `nf4`, the projections a QLoRA base holds as NF4 are quantized as each checkpoint
/// tensor is read (`Model::attach_lora` then leaves them), so the base is never whole in float32.
pub fn load_as(spec: &ModelSpec, device: Device, share: Option<Share>, nf4: Option<crate::recipe::Nf4Base>) -> Result<Model> {
    let ck = spec.checkpoint.as_ref().context("an imported model names its checkpoint")?;
    if ck.files.is_empty() {
        bail!(
            "model `{}`: {} holds config.json but no weights (model.safetensors or an index with its shards); `roux plan` works without them, `run` needs them",
            spec.name,
            ck.dir.display()
        );
    }
    let places = names::places(spec, ck.family);
    // The checkpoint tensors each place reads: of a divided stack kept apart by expert, only
    // this process's experts.
    let read: Vec<Vec<String>> = places
        .iter()
        .map(|(name, p)| match (p.experts, share.filter(|_| routed_expert(name))) {
            (Some(e), Some(s)) => {
                let (first, n) = s.rows(e as i64);
                p.names().into_iter().skip(first as usize).take(n as usize).collect()
            }
            _ => p.names(),
        })
        .collect();
    let names: Vec<String> = read.iter().flatten().cloned().collect();
    let wanted: HashMap<&str, ()> = names.iter().map(|n| (n.as_str(), ())).collect();
    // The checkpoint tensors read only by projections held as NF4, and those places: each is
    // quantized as it is read and not kept.
    let targets: std::collections::HashSet<String> = if nf4.is_some() { crate::lower::lora_linears(spec).into_iter().map(|l| format!("{}.weight", l.path)).collect() } else { Default::default() };
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in read.iter().enumerate() {
        for n in r {
            readers.entry(n.as_str()).or_default().push(i);
        }
    }
    readers.retain(|_, places_of| places_of.iter().all(|&i| targets.contains(&places[i].0) && places[i].1.experts.is_none()));
    let (mut theirs, mut quantized): (HashMap<String, Tensor>, HashMap<String, Nf4>) = Default::default();
    for f in &ck.files {
        read_file(ck, f, &wanted, &mut |name, t| {
            let Some(places_of) = readers.get(name.as_str()) else {
                theirs.insert(name, t);
                return Ok(());
            };
            for &i in places_of {
                let double = nf4.is_some_and(|b| b.double_quant);
                quantized.insert(places[i].0.clone(), Nf4::quantize(&shaped(&places[i].1, t.shallow_clone()).to_device(device), double)?);
            }
            Ok(())
        })?;
    }
    let mut ours = Vec::with_capacity(places.len());
    for ((name, place), read) in places.iter().zip(&read) {
        if quantized.contains_key(name) {
            continue;
        }
        let missing = |n: &str| format!("{} has no tensor `{n}` (did the checkpoint change after `roux check`?)", ck.dir.display());
        let t = if place.experts.is_some() {
            // Each expert's matrix is read once: taken out, so the stack is the only copy kept.
            let parts = read.iter().map(|n| theirs.remove(n).with_context(|| missing(n))).collect::<Result<Vec<_>>>()?;
            Tensor::stack(&parts, 0)
        } else {
            let whole = theirs.get(&place.hf).with_context(|| missing(&place.hf))?;
            // (A stack stored whole: this process's rows of it.)
            match share.filter(|_| routed_expert(name)) {
                Some(s) => s.of(whole),
                None => whole.shallow_clone(),
            }
        };
        ours.push((name.clone(), shaped(place, t)));
    }
    drop(theirs);
    Model::with_weights_and_nf4(spec, ours, quantized, device, share).with_context(|| format!("importing {}", ck.dir.display()))
}

/// A checkpoint tensor in roux's layout for `place`: transposed (GPT-2's Conv1D), its rows (a
/// fused projection's part).
fn shaped(place: &names::Place, t: Tensor) -> Tensor {
    let t = if place.transposed { t.tr() } else { t };
    let t = match place.rows {
        Some((start, len)) => t.narrow(0, start as i64, len as i64),
        None => t,
    };
    t.contiguous()
}

/// The tensors of one weight file that `wanted` names, each as a float32 CPU tensor given to
/// `take` as it is read.
fn read_file(ck: &Checkpoint, file: &str, wanted: &HashMap<&str, ()>, take: &mut dyn FnMut(String, Tensor) -> Result<()>) -> Result<()> {
    let path = ck.dir.join(file);
    let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let f = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    // SAFETY: the mapping is read-only and dropped before this returns; a file truncated by
    // another process meanwhile would fault, as it would for any reader of a mapped file.
    let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| anyhow::anyhow!("{}: not a readable safetensors file: {e}", path.display()))?;
    for (name, view) in st.tensors() {
        let Some(name) = (if ck.multimodal { names::text_model(&name) } else { Some(name) }) else { continue };
        if !wanted.contains_key(name.as_str()) {
            continue;
        }
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => Kind::Float,
            safetensors::Dtype::BF16 => Kind::BFloat16,
            safetensors::Dtype::F16 => Kind::Half,
            other => bail!("{}: tensor `{name}` is {other:?}; weights must be float32, bfloat16 or float16", path.display()),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = to_float(view.data(), &shape, kind).with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        take(name.clone(), t)?;
        // The tensor is copied out: give its pages of the file back, so that the mapping does not
        // hold a second copy of the weights while the rest are read (peak memory stays near the
        // float32 weights). A failed hint only costs memory.
        let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
        // SAFETY: a read-only mapping of a file; dropped pages are read again from the file if
        // touched, and this one is not touched again.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, view.data().len()) };
    }
    Ok(())
}

/// A float32 tensor of its own from `data` (little-endian elements of `kind`, row-major), read in
/// one pass: converted straight from the mapping when the bytes are aligned for their type.
fn to_float(data: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor> {
    // SAFETY: `data` holds exactly the tensor's bytes (the safetensors crate checked the sizes)
    // and outlives the view, which is copied or converted before returning.
    let view = unsafe { super::files::view_of(data, shape, kind)? };
    Ok(if kind == Kind::Float { view.copy() } else { view.to_kind(Kind::Float) })
}
