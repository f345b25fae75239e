//! QLoRA's frozen base (Dettmers et al. 2023; `lora { quantize_base = nf4 }`): a weight held as
//! 4-bit NormalFloat, as bitsandbytes holds it (blocks of 64 values, each block's absolute
//! maximum in float32, two codes to a byte), 0.5625 bytes a parameter; with double quantization
//! (`double_quant = true`) the scales less their mean in 8 bits, in blocks of 256 each with a
//! float32 scale, about 0.5159 bytes a parameter. The format and the linear
//! layer over it live in the C++ shim (run/kit/nf4.cpp), whose autograd function keeps the codes
//! for the backward pass rather than the dequantized weight, as bitsandbytes' `MatMul4Bit` does.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::shim::check;
use crate::recipe::Nf4Base;

type Raw = *mut std::ffi::c_void;

extern "C" {
    fn roux_nf4_quantize(w: Raw, twice: bool, codes: *mut Raw, absmax: *mut Raw, nested: *mut Raw, table: *mut Raw) -> *mut std::ffi::c_char;
    fn roux_nf4_dequantize(codes: Raw, absmax: Raw, nested: Raw, table: Raw, n: i64, out: *mut Raw) -> *mut std::ffi::c_char;
    fn roux_nf4_scales(absmax: Raw, nested: Raw, table: Raw, out: *mut Raw) -> *mut std::ffi::c_char;
    fn roux_nf4_table(device: Raw, out: *mut Raw) -> *mut std::ffi::c_char;
    fn roux_nf4_linear(x: Raw, codes: Raw, absmax: Raw, nested: Raw, table: Raw, out: i64, inp: i64, y: *mut Raw) -> *mut std::ffi::c_char;
}

/// Values a block of the weight shares one scale over.
pub const BLOCK: i64 = 64;

/// An (out, in) weight in NF4.
pub struct Nf4 {
    /// Two codes a byte, the first in the high four bits (bitsandbytes' packing).
    pub codes: Tensor,
    /// Each block's absolute maximum (float32), or with double quantization its 8-bit code.
    pub absmax: Tensor,
    /// With double quantization, what reads `absmax`'s codes with the table's dynamic code: the
    /// scales' mean, then each block of 256 scales' absolute maximum (float32).
    pub nested: Option<Tensor>,
    /// Byte → its two codes' values (256 × 2 floats), then the 8-bit dynamic code's 256 values,
    /// on the weight's device: one a model, shared by its weights (`Model::quantized_weight`),
    /// so not counted in `bytes`.
    table: Tensor,
    pub out: i64,
    pub inp: i64,
}

/// A tensor the shim made (on success it stored a new at::Tensor, which tch's Tensor then owns).
fn adopt(p: Raw) -> Tensor {
    // SAFETY: called only after the shim returned success, having stored a fresh at::Tensor*.
    unsafe { Tensor::from_ptr(p as *mut _) }
}

impl Nf4 {
    /// `w` (out, in), float32 or bf16, rounded to NF4; with `double`, its scales to 8 bits.
    pub fn quantize(w: &Tensor, double: bool) -> Result<Nf4> {
        let (out, inp) = w.size2()?;
        let null = std::ptr::null_mut;
        let (mut codes, mut absmax, mut nested, mut table): (Raw, Raw, Raw, Raw) = (null(), null(), null(), null());
        // SAFETY: `w` is a live at::Tensor for the call's duration.
        check("quantizing a weight to NF4", unsafe { roux_nf4_quantize(w.as_ptr() as Raw, double, &mut codes, &mut absmax, &mut nested, &mut table) })?;
        let nested = (!nested.is_null()).then(|| adopt(nested));
        Ok(Nf4 { codes: adopt(codes), absmax: adopt(absmax), nested, table: adopt(table), out, inp })
    }

    /// The nested statistics for the shim: null without double quantization.
    fn nested_ptr(&self) -> Raw {
        self.nested.as_ref().map_or(std::ptr::null_mut(), |t| t.as_ptr() as Raw)
    }

    /// Each block's absolute maximum, float32: `absmax`, or what its 8-bit codes stand for.
    pub fn scales(&self) -> Tensor {
        let mut out: Raw = std::ptr::null_mut();
        // SAFETY: the tensors live for the call's duration.
        let r = unsafe { roux_nf4_scales(self.absmax.as_ptr() as Raw, self.nested_ptr(), self.table.as_ptr() as Raw, &mut out) };
        check("reading an NF4 weight's scales", r).unwrap_or_else(|e| panic!("{e}"));
        adopt(out)
    }

    /// The weight the codes stand for, (out, in) in `kind`.
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        let mut out: Raw = std::ptr::null_mut();
        // SAFETY: the tensors live for the call's duration.
        let r = unsafe { roux_nf4_dequantize(self.codes.as_ptr() as Raw, self.absmax.as_ptr() as Raw, self.nested_ptr(), self.table.as_ptr() as Raw, self.out * self.inp, &mut out) };
        // (As a failing tch operation does: allocation is all that can fail here.)
        check("dequantizing an NF4 weight", r).unwrap_or_else(|e| panic!("{e}"));
        adopt(out).view([self.out, self.inp]).to_kind(kind)
    }

    /// x · Wᵀ in x's kind, differentiable in x only; the backward pass dequantizes again.
    pub fn linear(&self, x: &Tensor) -> Tensor {
        let mut y: Raw = std::ptr::null_mut();
        // SAFETY: the four tensors live for the call's duration.
        let r = unsafe { roux_nf4_linear(x.as_ptr() as Raw, self.codes.as_ptr() as Raw, self.absmax.as_ptr() as Raw, self.nested_ptr(), self.table.as_ptr() as Raw, self.out, self.inp, &mut y) };
        check("a linear layer over NF4 weights", r).unwrap_or_else(|e| panic!("{e}"));
        adopt(y)
    }

    /// Bytes held: the codes and the scales (the table is the model's).
    pub fn bytes(&self) -> u64 {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        bytes(&self.codes) + bytes(&self.absmax) + self.nested.as_ref().map_or(0, bytes)
    }

    /// The values table every NF4 weight reads, on `device` (a test's check of the dynamic code).
    pub fn table(device: tch::Device) -> Tensor {
        let probe = Tensor::zeros([1], (Kind::Float, device));
        let mut out: Raw = std::ptr::null_mut();
        // SAFETY: `probe` lives for the call's duration.
        check("making the NF4 values table", unsafe { roux_nf4_table(probe.as_ptr() as Raw, &mut out) }).unwrap_or_else(|e| panic!("{e}"));
        adopt(out)
    }

    /// The same weight, sharing its tensors (a LoRA model's base view).
    pub fn share(&self) -> Nf4 {
        let nested = self.nested.as_ref().map(Tensor::shallow_clone);
        Nf4 { codes: self.codes.shallow_clone(), absmax: self.absmax.shallow_clone(), nested, table: self.table.shallow_clone(), out: self.out, inp: self.inp }
    }
}

impl super::Model {
    /// Hold every attention and MLP projection (the linears LoRA can target; not embeddings,
    /// the head, routers or stacked experts, as bitsandbytes quantizes a model's `nn.Linear`s
    /// but its head) as NF4, in place of its float weight.
    pub(super) fn quantize_base(&mut self, base: Nf4Base) -> Result<()> {
        // (Those quantized as they were loaded, `Model::loaded`, stay as they are.)
        self.quantized.resize_with(self.params.len(), || None);
        tch::no_grad(|| -> Result<()> {
            for l in crate::lower::lora_linears(self.spec()) {
                let j = self.param_index(&format!("{}.weight", l.path)).expect("lora linears are model weights");
                if self.quantized[j].is_some() {
                    continue;
                }
                let q = self.quantized_weight(&self.params[j], base)?;
                let size = self.params[j].size();
                // A stride-0 view keeps the parameter's shape (its count in reports) and no memory.
                self.params[j] = Tensor::zeros([1], (Kind::Float, self.device)).expand(&size, false);
                self.quantized[j] = Some(q);
            }
            Ok(())
        })?;
        self.drop_casts();
        Ok(())
    }
}

impl super::Model {
    /// Every NF4 weight reads the first one's value table (weights quantized apart).
    pub(super) fn share_nf4_table(&mut self) {
        let Some(table) = self.quantized.iter().flatten().next().map(|q| q.table.shallow_clone()) else { return };
        for q in self.quantized.iter_mut().flatten() {
            q.table = table.shallow_clone();
        }
    }

    /// `w` as NF4, sharing the value table of the weights already quantized.
    pub(super) fn quantized_weight(&self, w: &Tensor, base: Nf4Base) -> Result<Nf4> {
        let mut q = Nf4::quantize(w, base.double_quant)?;
        if let Some(first) = self.quantized.iter().flatten().next() {
            q.table = first.table.shallow_clone();
        }
        Ok(q)
    }
}
