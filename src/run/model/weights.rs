//! Weights into a model: copied from a checkpoint into its parameters (`load`), or adopted as
//! its parameters (`with_weights`: an imported checkpoint held once, never twice).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

use super::expert_parallel::Share;
use super::Model;
use crate::lower::lower_model;
use crate::recipe::{ModelSpec, Nf4Base};

impl Model {
    /// Copy weights in from named tensors; every parameter must be present with its shape (a
    /// divided expert stack: whole, of which this process's rows are taken).
    pub fn load(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for j in 0..self.params.len() {
            let name = &self.names[j];
            let Some(t) = given.get(name.as_str()) else { bail!("checkpoint has no tensor `{name}`") };
            let mine = self.own_rows(j, t);
            usable(name, t, &self.whole_size(j), &mine)?;
            tch::no_grad(|| self.params[j].copy_(&mine));
        }
        self.drop_casts();
        Ok(())
    }

    /// The model of `spec` with `tensors` as its parameters, moved to `device` (no copy there
    /// when they are already on it). Every parameter must be given, float32, finite, of its shape
    /// (of a divided expert stack, `share`'s rows only).
    pub fn with_weights(spec: &ModelSpec, tensors: Vec<(String, Tensor)>, device: Device, share: Option<Share>) -> Result<Model> {
        Self::with_weights_and_nf4(spec, tensors, HashMap::new(), device, share)
    }

    /// `with_weights`, with the parameters `nf4` names already held as NF4 (a QLoRA base's
    /// projections, quantized as they were read).
    pub fn with_weights_and_nf4(spec: &ModelSpec, tensors: Vec<(String, Tensor)>, mut nf4: HashMap<String, super::nf4::Nf4>, device: Device, share: Option<Share>) -> Result<Model> {
        // Stride-0 placeholders: the real tensors replace them, so nothing is allocated twice.
        let mut m = Self::build(lower_model(spec), device, false, share)?;
        let mut given: HashMap<String, Tensor> = tensors.into_iter().collect();
        m.quantized = m.names.iter().map(|n| nf4.remove(n)).collect();
        m.share_nf4_table();
        for ((name, p), q) in m.names.iter().zip(m.params.iter_mut()).zip(&m.quantized) {
            if q.is_some() {
                continue;
            }
            let t = given.remove(name).with_context(|| format!("checkpoint has no tensor `{name}`"))?;
            usable(name, &t, &p.size(), &t)?;
            *p = t.to_device(device).set_requires_grad(true);
        }
        if let Some(extra) = given.keys().chain(nf4.keys()).next() {
            bail!("checkpoint tensor `{extra}` is not a parameter of model `{}`", spec.name);
        }
        Ok(m)
    }
}

impl Model {
    /// The model of `spec` with the weights of `tensors` (views into a file: each is copied in),
    /// every parameter drawn as `new` draws it and dropped, one at a time, so the random
    /// generator ends where `new` leaves it and nothing is ever held twice; with `nf4` the
    /// linears a QLoRA base quantizes are held as NF4 as they arrive (`nf4.rs`), never whole
    /// in float32 beside the rest.
    pub fn loaded(spec: &ModelSpec, device: Device, tensors: &[(String, Tensor)], nf4: Option<Nf4Base>) -> Result<Model> {
        let mut m = Self::build(lower_model(spec), device, false, None)?;
        let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let quantized: std::collections::HashSet<String> = if nf4.is_some() { crate::lower::lora_linears(spec).into_iter().map(|l| format!("{}.weight", l.path)).collect() } else { Default::default() };
        m.quantized = (0..m.params.len()).map(|_| None).collect();
        for (j, p) in m.graph.params().into_iter().enumerate() {
            let name = m.names[j].clone();
            let Some(t) = given.get(name.as_str()) else { bail!("checkpoint has no tensor `{name}`") };
            let size = m.params[j].size();
            usable(&name, t, &size, t)?;
            tch::no_grad(|| -> Result<()> {
                if let crate::lower::ParamInit::Normal { .. } = p.init {
                    // (Drawn only to advance the generator as `new` would.)
                    let _ = Tensor::f_randn(&size, (Kind::Float, device)).map_err(|e| anyhow::anyhow!("could not allocate `{name}`: {e}"))?;
                }
                if let Some(base) = nf4.filter(|_| quantized.contains(&name)) {
                    m.quantized[j] = Some(m.quantized_weight(&t.to_device(device), base)?);
                } else {
                    m.params[j] = t.to_device(device).copy().set_requires_grad(true);
                }
                Ok(())
            })?;
        }
        Ok(m)
    }

    /// Parameter `j`'s shape whole (a divided stack's with every process's rows).
    pub fn whole_size(&self, j: usize) -> Vec<i64> {
        let mut size = self.params[j].size();
        if let Some(s) = self.share.filter(|_| self.divided.contains(&j)) {
            size[0] *= s.parts;
        }
        size
    }
}

/// A checkpoint tensor fit to be parameter `name` of shape `size`: the shape, float32, and
/// finite (NaN weights would pass silently into every score and sample drawn from them) where
/// it is used: `used`, the rows of it this process holds.
fn usable(name: &str, t: &Tensor, size: &[i64], used: &Tensor) -> Result<()> {
    if t.size() != size {
        bail!("checkpoint tensor `{name}` has shape {:?}, the model expects {:?}", t.size(), size);
    }
    if t.kind() != Kind::Float {
        bail!("checkpoint tensor `{name}` is {}, expected float32", kind_name(t.kind()));
    }
    if !all_finite(used) {
        bail!("checkpoint tensor `{name}` has non-finite values (NaN or infinity); the model cannot be used");
    }
    Ok(())
}

/// Whether every element is finite, checked a million elements at a time: `isfinite` over a
/// whole tensor makes temporaries as large as it (an imported model's peak memory was 1.5× its
/// weights, from the embedding alone).
pub fn all_finite(t: &Tensor) -> bool {
    let flat = t.reshape([-1]);
    let n = flat.size()[0];
    (0..n).step_by(1 << 20).all(|i| bool::try_from(flat.narrow(0, i, (1 << 20).min(n - i)).isfinite().all()).unwrap_or(false))
}

/// A tensor's element type as PyTorch names it (`bfloat16`, `float16`), for messages.
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "a type other than float32",
    }
}
